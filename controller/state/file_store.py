"""Local-mode state store: one JSON file per rollout, written atomically.

write temp file in the same directory -> fsync -> os.replace -> fsync directory,
so a controller killed at any moment leaves either the old or the new state,
never a torn file. Commands (pause/resume/abort/promote) are files too, cleared only after the
tick that applied them has saved its state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from controller.atomic_file import atomic_write
from controller.engine.phases import Command, RolloutState


class StateStoreError(Exception):
    pass


class StateStore(Protocol):
    def track(self, rollouts: Mapping[str, tuple[str, str]]) -> None:
        """Where each rollout lives: name -> (namespace, service). Called when the rollout set changes."""
        ...

    def begin_tick(self) -> None:
        """Called once at the start of each tick, before any load (a chance to read in bulk)."""
        ...

    def load(self, rollout: str) -> RolloutState | None: ...
    def save(self, state: RolloutState) -> None: ...
    def pending_command(self, rollout: str) -> Command | None: ...
    def clear_command(self, rollout: str) -> None: ...


class FileStateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def track(self, rollouts: Mapping[str, tuple[str, str]]) -> None:
        """Files are keyed by rollout name alone; nothing to remember."""

    def begin_tick(self) -> None:
        """Files are read one by one; nothing to prepare."""

    def _state_path(self, rollout: str) -> Path:
        return self.directory / f"{rollout}.state.json"

    def _command_path(self, rollout: str) -> Path:
        return self.directory / f"{rollout}.command"

    def load(self, rollout: str) -> RolloutState | None:
        path = self._state_path(rollout)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return RolloutState.model_validate_json(raw)
        except ValidationError as exc:
            raise StateStoreError(f"{path}: unreadable rollout state: {exc.error_count()} problem(s)") from exc

    def save(self, state: RolloutState) -> None:
        atomic_write(self._state_path(state.rollout), state.model_dump_json(indent=2).encode())

    def request(self, rollout: str, command: Command) -> None:
        atomic_write(self._command_path(rollout), json.dumps({"command": command.value}).encode())

    def pending_command(self, rollout: str) -> Command | None:
        """The requested command, left in place until `clear_command` (after the state is saved)."""
        path = self._command_path(rollout)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            return Command(payload.get("command"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError):
            path.unlink(missing_ok=True)  # garbage is dropped, never acted on
            return None

    def clear_command(self, rollout: str) -> None:
        self._command_path(rollout).unlink(missing_ok=True)

    def all_states(self) -> list[RolloutState]:
        states = []
        for path in sorted(self.directory.glob("*.state.json")):
            state = self.load(path.name.removesuffix(".state.json"))
            if state is not None:
                states.append(state)
        return states
