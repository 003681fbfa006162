"""`post-rollout` hooks: told once a rollout is promoted, rolled back or failed, never from inside the tick.

`PostRolloutHooks` is a runner observer: on the tick that ends a rollout it builds one payload per
post-rollout hook and hands it to a `BackgroundSender`, a single thread with a bounded queue. A full queue
drops the delivery (logged and counted) rather than block the tick; a receiver that fails is retried within
its hook's timeout (HookClient) and then given up, logged and counted. Nothing here can change the rollout.
(To be merged with the notification queue of controller.notify: the same transitions feed both.)
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import structlog

from controller.engine.ports import TickEvent
from controller.hooks.client import HookClient
from controller.hooks.payload import build_payload, encode
from controller.spec_hooks import Hook

log = structlog.get_logger("ramp.hooks")

QUEUE_CAPACITY = 256
ENDINGS = frozenset({"promoted", "rolled_back", "failed"})  # transition kinds that end a rollout


@dataclass(frozen=True)
class Delivery:
    rollout: str
    hook: Hook
    body: bytes


class BackgroundSender:
    """One daemon thread sending deliveries in order; started on the first delivery."""

    def __init__(self, client: HookClient | None = None, capacity: int = QUEUE_CAPACITY) -> None:
        self.client = client or HookClient()
        self._queue: queue.Queue[Delivery | None] = queue.Queue(maxsize=capacity)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def submit(self, delivery: Delivery) -> bool:
        """Queue `delivery`; False (dropped, logged) when the queue is full. Never blocks."""
        self._start()
        try:
            self._queue.put_nowait(delivery)
            return True
        except queue.Full:
            self.dropped += 1
            log.error("post-rollout hook dropped: queue full", rollout=delivery.rollout, hook=delivery.hook.name)
            return False

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="ramp-post-rollout", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                answer = self.client.call(item.hook, item.body)
            except Exception as exc:  # the client never raises; a bug here must not kill the sender
                answer = None
                log.error("post-rollout hook failed", rollout=item.rollout, hook=item.hook.name,
                          error=type(exc).__name__)  # fmt: skip
            if answer is not None and answer.ok:
                self.delivered += 1
                log.info("post-rollout hook delivered", rollout=item.rollout, hook=item.hook.name)
            else:
                self.failed += 1
                log.warning("post-rollout hook not delivered", rollout=item.rollout, hook=item.hook.name,
                            reason=None if answer is None else answer.reason)  # fmt: skip
            self._queue.task_done()

    def close(self, timeout: float = 5.0) -> None:
        """Let queued deliveries go out for up to `timeout` seconds, then stop the thread."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        thread.join(timeout)


class PostRolloutHooks:
    """Observer: hands the final payload of an ended rollout to the background sender (see the module docstring)."""

    def __init__(self, sender: BackgroundSender | None = None) -> None:
        self.sender = sender or BackgroundSender()

    def __call__(self, event: TickEvent) -> None:
        try:
            self._observe(event)
        except Exception as exc:  # an observer never breaks a tick
            log.error("post-rollout hooks failed", rollout=event.rollout.name, error=type(exc).__name__)

    def _observe(self, event: TickEvent) -> None:
        spec = event.rollout.spec
        hooks = [h for h in spec.hooks if h.type == "post-rollout"]
        # The tick's transitions say, once, that the rollout ended now (never for an abandoned tick, nor for an
        # ending merely confirmed by the data plane a tick later).
        if not hooks or not any(t.kind in ENDINGS for t in event.transitions):
            return
        state = event.decision.state
        plan = event.rollout.plan
        steps = len(plan.steps)
        for hook in hooks:
            payload = build_payload(hook, spec, phase=state.phase.value, step=min(state.step + 1, steps), steps=steps,
                                    routing=event.decision.routing, reason=state.reason, at=event.at)  # fmt: skip
            self.sender.submit(Delivery(event.rollout.name, hook, encode(payload)))
