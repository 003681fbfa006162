"""Local-mode state store: one JSON file per rollout, written atomically.

write temp file in the same directory -> fsync -> os.replace -> fsync directory,
so a controller killed at any moment leaves either the old or the new state,
never a torn file. Commands (pause/resume/abort/promote/set-weights) are files too, one pending
at a time (a second is refused until the first is applied: nothing is silently replaced), cleared
only after the tick that applied or refused them has saved its state with the outcome.

A state file that cannot be read or parsed raises StateStoreError (a StateDamaged): the runner then
fails safe to the baseline and `quarantine` keeps the damaged file aside for inspection. One
controller per directory: `lock()` takes an exclusive lock that a second `ramp run` cannot get.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from controller.atomic_file import atomic_write
from controller.atomic_file import read_limited as _read_limited
from controller.engine.commands import MAX_COMMAND_BYTES, CommandError, CommandRequest, as_request
from controller.engine.phases import Command, RolloutState
from controller.engine.state_port import CommandPending as CommandPending  # re-exported
from controller.engine.state_port import StateStore as StateStore  # re-exported
from controller.engine.state_port import StateStoreError as StateStoreError  # re-exported

MAX_STATE_BYTES = 1024 * 1024
LOCK_FILE = ".ramp-run.lock"


class StateDirLocked(RuntimeError):
    """Another controller already runs on this state directory."""


class FileStateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock: IO[bytes] | None = None

    def lock(self) -> None:
        """Exclusive use of the directory by this process (released when it exits); StateDirLocked if taken."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_FILE
        handle = path.open("a+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(64).decode("ascii", "replace").strip() or "unknown"
            handle.close()
            raise StateDirLocked(
                f"state directory {self.directory} is in use by another ramp controller (pid {holder}); "
                "stop it first, or use another --state-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()).encode())
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def track(self, rollouts: Mapping[str, tuple[str, ...]]) -> None:
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
            raw = _read_limited(path, MAX_STATE_BYTES)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateStoreError(f"{path}: unreadable rollout state: {exc}") from None
        if not raw.strip():
            raise StateStoreError(f"{path}: empty rollout state file")
        try:
            return RolloutState.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "$"
            raise StateStoreError(
                f"{path}: invalid rollout state ({exc.error_count()} problem(s), first: {where}: {first['msg']})"
            ) from None

    def quarantine(self, rollout: str, problem: str) -> str | None:
        """Move a damaged state file aside (kept for inspection); returns where it went."""
        path = self._state_path(rollout)
        if not path.exists():
            return None
        aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
        os.replace(path, aside)
        return str(aside)

    def save(self, state: RolloutState) -> None:
        atomic_write(self._state_path(state.rollout), state.model_dump_json(indent=1).encode())

    def request(self, rollout: str, command: CommandRequest | Command) -> None:
        """Queue `command`; CommandPending while an earlier one has not been applied or refused yet."""
        command = as_request(command)
        path = self._command_path(rollout)
        self.directory.mkdir(parents=True, exist_ok=True)
        # Written whole to a temporary file, then hard-linked into place: the link appears atomically with its
        # full content (a controller never reads a half-written command) and fails if a command is pending.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(command.encode().encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp_name, path)
        except FileExistsError:
            try:
                pending = CommandRequest.decode(_read_limited(path, MAX_COMMAND_BYTES).decode("utf-8", "replace"))
                what = f"{pending.command.value} (id {pending.id or '?'})"
            except (OSError, ValueError):
                what = "an unreadable command"
            raise CommandPending(
                f"{what} is still waiting for the controller of {rollout}; it is applied or refused on the "
                "next tick (is `ramp run` running?)"
            ) from None
        finally:
            os.unlink(tmp_name)

    def pending_command(self, rollout: str) -> CommandRequest | None:
        """The requested command, left in place until `clear_command` (after the state is saved)."""
        path = self._command_path(rollout)
        try:
            raw = _read_limited(path, MAX_COMMAND_BYTES)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CommandError(f"{path}: {exc}") from None
        try:
            return CommandRequest.decode(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise CommandError(f"{path}: not UTF-8 text") from None

    def clear_command(self, rollout: str) -> None:
        self._command_path(rollout).unlink(missing_ok=True)

    def all_states(self) -> list[RolloutState]:
        return self.states_and_problems()[0]

    def states_and_problems(self) -> tuple[list[RolloutState], dict[str, str]]:
        """Every readable state, and per rollout name why its state is not (one bad file spoils no other)."""
        states, problems = [], {}
        for path in sorted(self.directory.glob("*.state.json")):
            name = path.name.removesuffix(".state.json")
            try:
                state = self.load(name)
            except StateStoreError as exc:
                problems[name] = str(exc)
                continue
            if state is not None:
                states.append(state)
        return states, problems
