"""One load run: paced requests carrying the header, bounded in rate, duration, concurrency and total count.

Pacing. Request k may start no earlier than `due_k = max(due_{k-1} + 1/rps, now)`: consecutive start times are at
least 1/rps apart, and a run that fell behind (a slow target, a busy machine) resumes at the rate instead of
catching up in a burst. So by `t` seconds into the run at most `floor(rps * t) + 1` requests have started, whatever
the target does; the tests check exactly this bound. No request starts at or after `duration`, and at most
`max_requests` start.

Concurrency. `concurrency` worker threads share the schedule; each sends one request at a time, through
`bounded_request` (a TOTAL deadline of `timeout` per request: connect, headers and body, even from a target that
dribbles bytes), and reads at most 1 MiB of each answer. A run therefore ends by itself at `duration + timeout` at
the latest, and `stop()` ends it sooner (requests in flight finish within their timeout).

Counts. `sent` (started), `ok` (HTTP 1xx-3xx), and errors by HTTP code, or `timeout`, `too_large` (an answer
over 1 MiB) and `failed` (no HTTP answer: refused, reset, malformed); `last_error` keeps the latest reason.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from controller.deadline import Deadline
from controller.http_deadline import HttpError, HttpTimeout, HttpTooLarge, bounded_request
from controller.loadtest.request import LoadRequest

MAX_ANSWER_BYTES = 1024 * 1024
USER_AGENT = "ramp-loadtest/1"


def _iso(wall: float | None) -> str | None:
    return None if wall is None else datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


class LoadRun:
    def __init__(self, run_id: str, request: LoadRequest, on_result: Callable[[str], None] | None = None) -> None:
        self.id = run_id
        self.request = request
        self._on_result = on_result  # e.g. a Prometheus counter by outcome ("ok", "503", "timeout", ...)
        self.interval = 1.0 / request.rps
        self.sent = 0
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.last_error = ""
        self.stop_reason = ""
        self.started_monotonic = 0.0
        self.started_wall = 0.0
        self.ended_wall: float | None = None
        self._issued = 0
        self._last_due = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._alive = 0

    @property
    def end_monotonic(self) -> float:
        return self.started_monotonic + self.request.duration

    def start(self) -> LoadRun:
        self.started_monotonic, self.started_wall = time.monotonic(), time.time()
        self._alive = self.request.concurrency
        for i in range(self.request.concurrency):
            thread = threading.Thread(target=self._worker, name=f"loadtest-{self.id}-{i}", daemon=True)
            self._threads.append(thread)
        for started, thread in enumerate(self._threads):
            try:
                thread.start()
            except RuntimeError:  # no more threads: run with those that started, never count the others
                with self._lock:
                    self._alive -= len(self._threads) - started
                    if self._alive == 0:
                        self.ended_wall = time.time()
                self._threads = self._threads[:started]
                if not started:
                    raise
                break
        return self

    def stop(self, reason: str = "stopped") -> None:
        with self._lock:
            if not self._stop.is_set() and self._alive:
                self.stop_reason = reason
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the workers; True when they all ended."""
        end = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if end is None else max(0.0, end - time.monotonic()))
        return not self.running

    @property
    def running(self) -> bool:
        with self._lock:
            return self._alive > 0

    def _next_due(self) -> float | None:
        """When the next request may start, or None when the run is over (stopped, duration, max_requests)."""
        with self._lock:
            if self._stop.is_set() or self._issued >= self.request.max_requests:
                return None
            now = time.monotonic()
            due = self.started_monotonic if self._issued == 0 else max(self._last_due + self.interval, now)
            if due >= self.end_monotonic:
                return None
            self._issued += 1
            self._last_due = due
            return due

    def _worker(self) -> None:
        try:
            while (due := self._next_due()) is not None:
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                if time.monotonic() >= self.end_monotonic:
                    return
                with self._lock:
                    self.sent += 1
                self._record(*self._send())
        finally:
            with self._lock:
                self._alive -= 1
                if self._alive == 0:
                    self.ended_wall = time.time()

    def _send(self) -> tuple[str | None, str]:
        """(error kind or None when ok, the reason of a failure)."""
        request = self.request
        headers = {"User-Agent": USER_AGENT}
        if request.host is not None:
            headers["Host"] = request.host
        if request.header is not None:
            headers[request.header[0]] = request.header[1]
        try:
            answer = bounded_request(
                request.method, request.url, deadline=Deadline(request.timeout), headers=headers,
                max_bytes=MAX_ANSWER_BYTES,
            )  # fmt: skip
        except HttpTimeout as exc:
            return "timeout", str(exc)
        except HttpTooLarge as exc:
            return "too_large", str(exc)
        except HttpError as exc:
            return "failed", str(exc)
        if 100 <= answer.status < 400:
            return None, ""
        return str(answer.status), f"HTTP {answer.status}"

    def _record(self, error: str | None, reason: str) -> None:
        with self._lock:
            if error is None:
                self.ok += 1
            else:
                self.errors[error] += 1
                self.last_error = reason[:300]
        if self._on_result is not None:
            self._on_result(error or "ok")

    def status(self) -> dict[str, Any]:
        """What `GET /runs` shows of this run (nothing secret: the URL carries no credentials)."""
        request = self.request
        with self._lock:
            alive, sent, ok, errors = self._alive, self.sent, self.ok, dict(sorted(self.errors.items()))
            state = "running" if alive else ("stopped" if self.stop_reason else "finished")
            return {
                "id": self.id,
                "rollout": request.rollout,
                "namespace": request.namespace,
                "step": request.step,
                "target": request.target,
                "url": request.url,
                "host": request.host,
                "header": None if request.header is None else f"{request.header[0]}: {request.header[1]}",
                "method": request.method,
                "rps": request.rps,
                "duration": request.duration,
                "concurrency": request.concurrency,
                "max_requests": request.max_requests,
                "state": state,
                "stop_reason": self.stop_reason or None,
                "sent": sent,
                "ok": ok,
                "errors": errors,
                "in_flight": sent - ok - sum(errors.values()),
                "last_error": self.last_error or None,
                "started": _iso(self.started_wall),
                "ends": _iso(self.started_wall + request.duration),
                "ended": _iso(self.ended_wall),
            }
