"""The state port: where the engine keeps each rollout's state and finds people's commands.

Implemented by the local state directory (controller.state.file_store) and, in a cluster, by the route objects
themselves (controller.routing.object_backend: the state is an annotation written with the routing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from controller.engine.commands import CommandRequest
from controller.engine.phases import RolloutState
from controller.engine.state_check import StateDamaged


class StateStoreError(StateDamaged):
    """A stored state that cannot be read or parsed."""


class CommandPending(RuntimeError):
    """A command is still waiting for the controller; a second one would replace it."""


class StateStore(Protocol):
    def track(self, rollouts: Mapping[str, tuple[str, ...]]) -> None:
        """Where each rollout lives: name -> (namespace, service, router). Called when the rollout set changes."""
        ...

    def begin_tick(self) -> None:
        """Called once at the start of each tick, before any load (a chance to read in bulk)."""
        ...

    def load(self, rollout: str) -> RolloutState | None: ...
    def save(self, state: RolloutState) -> None: ...
    def pending_command(self, rollout: str) -> CommandRequest | None:
        """The command waiting for this rollout; CommandError when it cannot be read (it is refused)."""
        ...

    def clear_command(self, rollout: str) -> None: ...
