"""The runner observer that notifies: each tick's transitions (`TickEvent.transitions`, computed once per tick),
for each notification that wants them (its `events`), the rollout's own (`notifications:` in its spec) and the
controller's global ones (`--notifications FILE`), go to the delivery queue. Enqueueing is memory only; nothing
here can fail a tick (every error is caught and logged).

The global file is a YAML list of notifications, validated like a spec (`file:line: field: reason`):

    - name: team-chat
      type: slack
      url_file: /etc/ramp/slack-url
      events: [rolled_back, failed, promoted]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import yaml
from pydantic import TypeAdapter, ValidationError

from controller.engine.ports import ManagedRollout, TickEvent
from controller.notify.delivery import NotificationDispatcher
from controller.notify.destination import GLOBAL_SCOPE, Destination
from controller.spec_notify import MAX_NOTIFICATIONS, Notification

if TYPE_CHECKING:
    from controller.controller_metrics import ControllerMetrics

log = structlog.get_logger("ramp.notify")
MAX_FILE_BYTES = 64 * 1024
MAX_KEPT_ROLLOUTS = 2000


class NotificationObserver:
    def __init__(self, dispatcher: NotificationDispatcher, global_notifications: Sequence[Notification] = ()) -> None:
        self.dispatcher = dispatcher
        self.global_destinations = [Destination(n, GLOBAL_SCOPE) for n in global_notifications]
        self._per_rollout: dict[str, tuple[str, list[Destination]]] = {}  # name -> (spec digest, destinations)

    def destinations(self, rollout: ManagedRollout) -> list[Destination]:
        """The rollout's own notifications (kept while its spec is unchanged: URL files are re-read only when
        they change) and the global ones."""
        known = self._per_rollout.get(rollout.name)
        if known is None or known[0] != rollout.digest:
            if len(self._per_rollout) >= MAX_KEPT_ROLLOUTS:  # rollouts come and go: never grow without bound
                self._per_rollout.clear()
            known = (rollout.digest, [Destination(n, rollout.name) for n in rollout.spec.notifications])
            self._per_rollout[rollout.name] = known
        return [*known[1], *self.global_destinations]

    def __call__(self, event: TickEvent) -> None:
        try:
            transitions = event.transitions
            if not transitions:
                return
            for destination in self.destinations(event.rollout):
                for transition in transitions:
                    if transition.kind in destination.notification.events:
                        self.dispatcher.enqueue(destination, transition)
        except Exception:  # an observer never breaks the tick
            log.exception("notifications not queued", rollout=event.rollout.name)


def load_notifications(path: Path) -> list[Notification]:
    """The controller's global notifications from a YAML list; raises SpecError naming file, line and field."""
    from controller.atomic_file import read_limited
    from controller.spec_loader import SpecError, SpecProblem, _compose, _dotted, _LineIndex, _pydantic_path

    file = str(path)
    try:
        raw = read_limited(path, MAX_FILE_BYTES)  # a regular file only: a FIFO in its place never blocks the start
    except OSError as exc:
        raise SpecError([SpecProblem(file, 1, "", f"cannot read: {exc.strerror or exc}")]) from None
    except ValueError as exc:
        raise SpecError([SpecProblem(file, 1, "", f"cannot read: {exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError([SpecProblem(file, 1, "", "file is not UTF-8 text")]) from None
    loader, docs = _compose(text, file)
    try:
        if len(docs) != 1:
            raise SpecError([SpecProblem(file, 1, "", f"expected exactly one YAML document, found {len(docs)}")])
        index = _LineIndex(docs[0])
        data: Any = loader.construct_document(docs[0])
    except yaml.YAMLError as exc:
        raise SpecError([SpecProblem(file, 1, "", " ".join(f"invalid YAML: {exc}".split()))]) from None
    finally:
        loader.dispose()
    problems = [SpecProblem(file, line, _dotted(p), "duplicate key") for p, line in index.duplicates]
    if not isinstance(data, list):
        problems.append(SpecProblem(file, 1, "", "expected a YAML list of notifications"))
        raise SpecError(problems)
    if len(data) > MAX_NOTIFICATIONS:
        problems.append(SpecProblem(file, 1, "", f"at most {MAX_NOTIFICATIONS} notifications"))
    try:
        found = TypeAdapter(list[Notification]).validate_python(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            where = _pydantic_path(err["loc"])
            reason = " ".join(err["msg"].removeprefix("Value error, ").split())
            problems.append(SpecProblem(file, index.line_of(where), _dotted(where), reason))
        found = []
    names = [n.name for n in found]
    for position, name in enumerate(names):
        if name in names[:position]:
            problems.append(SpecProblem(file, index.line_of((position, "name")), f"{position}.name",
                                        f"notification name {name!r} is used twice"))  # fmt: skip
    if problems:
        raise SpecError(sorted(problems, key=lambda p: p.line))
    return found


DRAIN_SECONDS = 5.0  # on shutdown, queued notifications get this long to go out


def start_notifications(
    global_notifications: Sequence[Notification] = (), metrics: ControllerMetrics | None = None
) -> tuple[NotificationObserver, NotificationDispatcher]:
    """A started dispatcher (stop it with `stop(DRAIN_SECONDS)`) and the observer feeding it; its counts exported
    by `metrics`."""
    dispatcher = NotificationDispatcher().start()
    if metrics is not None:
        metrics.watch_notifications(dispatcher.stats, dispatcher.queued)
    return NotificationObserver(dispatcher, global_notifications), dispatcher
