"""Delivery of notifications: a bounded queue drained by background workers, never by the tick.

- `enqueue` only appends to memory under a lock: it never blocks on I/O and never raises (a tick that notifies
  costs microseconds, whatever the receivers do);
- one lane per destination keeps its messages in order; a lane sends one message at a time, at most at its
  notifier's rate (token bucket: Slack allows about one message per second per webhook);
- each POST has a total deadline (controller.http_deadline); a transport error, a timeout, 408, 425, 429 or a 5xx
  is retried with jittered exponential backoff (429: after its Retry-After, when that fits), within
  `give_up_after` of the enqueue; any other answer is final; retries wait in their lane, never in a worker, so
  a slow destination never holds back the others beyond one attempt per worker;
- a full queue evicts its oldest progress message (an outcome, rolled back, failed or promoted, is evicted only
  when nothing else can be) and counts it as dropped;
- `stop(timeout)` keeps sending until the queue is empty or the bound has passed (an attempt in flight is cut at
  the bound), then counts what is left as dropped.

Every outcome is counted (`stats()`: sent, failed, dropped, retried, by notifier) for /metrics; a notification
that is not delivered is logged with its destination redacted. Nothing here can change a rollout.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from controller.deadline import Deadline
from controller.engine.ports import Transition
from controller.http_deadline import HttpAnswer, HttpError, bounded_request
from controller.notify.destination import Destination, DestinationError
from controller.webhook_signing import SIGNATURE_HEADER, sign

log = structlog.get_logger("ramp.notify")

OUTCOMES = ("sent", "failed", "dropped", "retried")
KEPT_KINDS = frozenset({"rolled_back", "failed", "promoted"})  # evicted last from a full queue
RETRIED_STATUS = frozenset({408, 425, 429})
MAX_ANSWER_BYTES = 64 * 1024
USER_AGENT = "ramp-notifications/1"


class Post(Protocol):
    def __call__(
        self, method: str, url: str, *, deadline: Deadline, headers: dict[str, str], body: bytes, max_bytes: int
    ) -> HttpAnswer: ...


@dataclass(frozen=True)
class DeliveryOptions:
    capacity: int = 500  # messages waiting, all destinations together
    attempt_timeout: float = 5.0  # total time of one POST
    give_up_after: float = 120.0  # from the enqueue: no attempt starts later
    max_attempts: int = 5
    backoff: float = 0.5  # first retry after up to this (full jitter), doubling up to max_backoff
    max_backoff: float = 15.0
    max_retry_after: float = 60.0  # a longer Retry-After is not waited for: the message fails
    workers: int = 2


@dataclass
class _Item:
    destination: Destination
    transition: Transition
    queued_at: float
    attempts: int = 0
    not_before: float = 0.0


@dataclass
class _Lane:
    rate: float
    burst: float
    tokens: float
    filled_at: float
    items: deque[_Item] = field(default_factory=deque)
    busy: bool = False

    def ready_at(self, now: float) -> float:
        """When the lane may send its next message: its head's retry time and a token."""
        tokens = min(self.burst, self.tokens + (now - self.filled_at) * self.rate)
        token_at = now if tokens >= 1.0 else now + (1.0 - tokens) / self.rate
        return max(self.items[0].not_before, token_at)

    def take(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.filled_at) * self.rate) - 1.0
        self.filled_at = now


def _retry_after(answer: HttpAnswer) -> float | None:
    """Retry-After in seconds (delta form; an HTTP date is not trusted), or None."""
    text = answer.headers.get("retry-after", "").strip()
    if not text.isdigit() or len(text) > 6:
        return None
    return float(text)


class NotificationDispatcher:
    def __init__(
        self,
        options: DeliveryOptions | None = None,
        post: Post = bounded_request,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options or DeliveryOptions()
        self._post = post
        self._clock = clock
        self._rng = rng or random.Random()
        self._lanes: dict[str, _Lane] = {}
        self._queued = 0
        self._cond = threading.Condition()
        self._counts: dict[tuple[str, str], int] = {}
        self._workers: list[threading.Thread] = []
        self._stopping = False
        self._drain_until = float("inf")
        self._drops_logged = 0

    # -- the tick's side: memory only -------------------------------------------------------------------------

    def enqueue(self, destination: Destination, transition: Transition) -> bool:
        """Queue one message; False when it could not be (stopped, or evicted at once). Never raises, never waits
        for I/O."""
        try:
            with self._cond:
                if self._stopping:
                    self._count(destination.type, "dropped")
                    return False
                now = self._clock()
                lane = self._lanes.get(destination.key)
                if lane is None:
                    self._prune(now)
                    notifier = destination.notifier
                    lane = _Lane(notifier.per_second, float(notifier.burst), float(notifier.burst), now)
                    self._lanes[destination.key] = lane
                item = _Item(destination, transition, now)
                lane.items.append(item)
                self._queued += 1
                kept = True
                if self._queued > self.options.capacity:
                    evicted = self._evict()
                    if evicted is None:  # everything else is in flight: the new one goes
                        lane.items.pop()
                        self._queued -= 1
                        self._count(destination.type, "dropped")
                    kept = evicted is not None and evicted is not item
                self._cond.notify()
                return kept
        except Exception:  # never into the tick
            log.exception("notification not queued")
            return False

    def _prune(self, now: float) -> None:
        """Forget idle lanes whose bucket has refilled (forgetting one earlier would reset its rate limit)."""
        self._lanes = {
            key: lane
            for key, lane in self._lanes.items()
            if lane.items or lane.busy or lane.tokens + (now - lane.filled_at) * lane.rate < lane.burst
        }

    def _evict(self) -> _Item | None:
        """Drop the oldest waiting message, progress messages before outcomes; never one in flight."""
        candidates = [
            (item.transition.kind in KEPT_KINDS, item.queued_at, key, index)
            for key, lane in self._lanes.items()
            for index, item in enumerate(lane.items)
            if not (lane.busy and index == 0)
        ]
        if not candidates:
            return None
        _, _, key, index = min(candidates)
        lane = self._lanes[key]
        item = lane.items[index]
        del lane.items[index]
        self._queued -= 1
        self._count(item.destination.type, "dropped")
        self._drops_logged += 1
        if self._drops_logged == 1 or self._drops_logged % 100 == 0:
            log.warning("notification queue full: message dropped", dropped_so_far=self._drops_logged,
                        notification=item.destination.label(), transition=item.transition.kind)  # fmt: skip
        return item

    def _count(self, notifier: str, outcome: str, n: int = 1) -> None:
        self._counts[(notifier, outcome)] = self._counts.get((notifier, outcome), 0) + n

    def stats(self) -> dict[tuple[str, str], int]:
        """(notifier type, outcome) -> count, outcomes in OUTCOMES."""
        with self._cond:
            return dict(self._counts)

    def queued(self) -> int:
        with self._cond:
            return self._queued

    # -- the workers ----------------------------------------------------------------------------------------

    def start(self) -> NotificationDispatcher:
        for number in range(self.options.workers):
            worker = threading.Thread(target=self._work, name=f"ramp-notify-{number}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self, timeout: float = 5.0) -> int:
        """Send what is queued for at most `timeout` seconds, then give up; returns the messages dropped then."""
        with self._cond:
            self._stopping = True
            self._drain_until = self._clock() + max(0.0, timeout)
            self._cond.notify_all()
        end = time.monotonic() + max(0.0, timeout) + 1.0
        for worker in self._workers:
            worker.join(max(0.0, end - time.monotonic()))
        with self._cond:
            left = self._queued
            for lane in self._lanes.values():
                for item in lane.items:
                    self._count(item.destination.type, "dropped")
                lane.items.clear()
            self._queued = 0
        if left:
            log.warning("notifications not sent before shutdown", dropped=left)
        return left

    def _next(self) -> tuple[_Lane, _Item] | None:
        """Under the lock: take the ready lane whose message is due first, or wait for one (None: quit)."""
        while True:
            now = self._clock()
            if self._stopping and (self._queued == 0 or now >= self._drain_until):
                return None
            best: tuple[float, _Lane] | None = None
            for lane in self._lanes.values():
                if lane.items and not lane.busy:
                    at = lane.ready_at(now)
                    if best is None or at < best[0]:
                        best = (at, lane)
            if best is not None and best[0] <= now:
                lane = best[1]
                lane.take(now)
                lane.busy = True
                return lane, lane.items[0]
            wake = best[0] - now if best is not None else 1.0
            if self._stopping:
                wake = min(wake, self._drain_until - now)
            self._cond.wait(max(0.001, min(wake, 1.0)))

    def _work(self) -> None:
        while True:
            with self._cond:
                taken = self._next()
            if taken is None:
                return
            lane, item = taken
            try:
                retry_in = self._attempt(item)
            except Exception:  # a bug here must not kill the worker
                log.exception("notification delivery failed", notification=item.destination.label())
                retry_in = None
                with self._cond:
                    self._count(item.destination.type, "failed")
            with self._cond:
                lane.busy = False
                if retry_in is None:
                    if lane.items and lane.items[0] is item:  # (stop() may have given up on it meanwhile)
                        lane.items.popleft()
                        self._queued -= 1
                else:
                    item.not_before = self._clock() + retry_in
                    self._count(item.destination.type, "retried")
                self._cond.notify_all()

    def _attempt(self, item: _Item) -> float | None:
        """One POST; the delay before the next attempt, or None when the message is done (sent or failed)."""
        destination, options = item.destination, self.options
        item.attempts += 1
        now = self._clock()
        left = min(options.attempt_timeout, item.queued_at + options.give_up_after - now)
        with self._cond:
            if self._stopping:
                left = min(left, self._drain_until - now)
        status: int | None = None
        retry_after: float | None = None
        try:
            url = destination.url()
            body = destination.notifier.render(item.transition)
            headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}
            secret = destination.secret()
            if secret is not None:
                headers[SIGNATURE_HEADER] = sign(body, secret)
            if left <= 0:
                raise HttpError("no time left to send")
            answer = self._post("POST", url, deadline=Deadline(left), headers=headers, body=body,
                                max_bytes=MAX_ANSWER_BYTES)  # fmt: skip
            status = answer.status
            if 200 <= status < 300:
                self._done(item, "sent")
                return None
            retry_after = _retry_after(answer) if status == 429 else None
            why = f"HTTP {status}: {answer.body[:200].decode('utf-8', 'replace')}"
        except (HttpError, DestinationError) as exc:
            why = str(exc)
        retryable = status is None or status in RETRIED_STATUS or status >= 500
        delay = self._backoff(item.attempts) if retry_after is None else retry_after
        out_of_time = self._clock() + delay >= item.queued_at + options.give_up_after
        if retry_after is not None and retry_after > options.max_retry_after:
            out_of_time = True
        if not retryable or item.attempts >= options.max_attempts or out_of_time:
            self._done(item, "failed", destination.redact(why))
            return None
        log.info("notification not delivered yet: will retry", notification=destination.label(),
                 attempt=item.attempts, retry_in=round(delay, 2), error=destination.redact(why)[:300])  # fmt: skip
        return delay

    def _backoff(self, attempts: int) -> float:
        ceiling = min(self.options.max_backoff, self.options.backoff * 2 ** (attempts - 1))
        return self._rng.uniform(ceiling / 2, ceiling)

    def _done(self, item: _Item, outcome: str, why: str = "") -> None:
        with self._cond:
            self._count(item.destination.type, outcome)
        if outcome == "failed":
            log.warning("notification not delivered", notification=item.destination.label(),
                        destination=item.destination.shown(), rollout=item.transition.rollout,
                        transition=item.transition.kind, attempts=item.attempts, error=why[:300])  # fmt: skip
