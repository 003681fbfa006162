"""Bounded HTTP load for the local stack (keep-alive connections via http.client).

`LoadGenerator` paces requests at `rate_rps` from a few background threads and stops
after `max_requests` requests or `max_seconds` seconds, whichever comes first (or on
`stop()`). `send_requests` is the synchronous helper the tests use to check splits.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

from controller.routing.envoy import RANDOM_VALUE_HEADER

UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class Response:
    status: int  # 0 when the request failed without an HTTP answer
    version: str | None
    header_sent: bool
    timestamp: float  # time.time() when the request was sent
    latency_s: float
    error: str | None = None


def _split_url(url: str) -> tuple[str, int, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http://host:port/path URLs are supported, got {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


def _version_of(body: bytes, served_by: str | None) -> str | None:
    try:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("version"), str):
            return str(data["version"])
    except ValueError:
        pass
    return served_by


class _Client:
    """One keep-alive connection; reconnects after errors or a `Connection: close`."""

    def __init__(self, url: str, timeout: float) -> None:
        self.host, self.port, self.path = _split_url(url)
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def get(self, headers: Mapping[str, str]) -> tuple[int, str | None, str | None]:
        """(status, version, error) for one GET; one retry on a stale keep-alive connection."""
        for attempt in range(2):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request("GET", self.path, headers=dict(headers))
                resp = self._conn.getresponse()
                body = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, _version_of(body, resp.getheader("x-served-by")), None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if (
                    reused
                    and attempt == 0
                    and isinstance(
                        exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError
                    )
                ):
                    continue
                return 0, None, f"{type(exc).__name__}: {exc}"
        return 0, None, "unreachable"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def send_requests(
    url: str,
    host: str,
    n: int,
    headers: Mapping[str, str] | None = None,
    random_seed: int | None = None,
    timeout: float = 5.0,
) -> list[tuple[int, str | None]]:
    """Send `n` sequential GETs on one keep-alive connection; [(status, version)].

    With `random_seed`, every request carries `x-ramp-random` drawn from random.Random(seed),
    which pins Envoy's weighted-cluster choice, so splits are reproducible.
    """
    rng = random.Random(random_seed) if random_seed is not None else None
    client = _Client(url, timeout)
    out: list[tuple[int, str | None]] = []
    try:
        for _ in range(n):
            h = {"Host": host, **(headers or {})}
            if rng is not None:
                h[RANDOM_VALUE_HEADER] = str(rng.randint(0, UINT64_MAX))
            status, version, _error = client.get(h)
            out.append((status, version))
    finally:
        client.close()
    return out


class LoadGenerator:
    """Paced background load; every response is recorded (see `results` and `summary`)."""

    def __init__(
        self,
        url: str,
        host_header: str,
        rate_rps: float,
        max_requests: int,
        max_seconds: float,
        header_fraction: float = 0.0,
        header: tuple[str, str] = ("x-version", "v2"),
        seed: int | None = None,
        concurrency: int = 4,
        timeout: float = 5.0,
    ) -> None:
        if rate_rps <= 0 or max_requests < 0 or max_seconds <= 0:
            raise ValueError("rate_rps and max_seconds must be > 0 and max_requests >= 0")
        if not 0.0 <= header_fraction <= 1.0:
            raise ValueError("header_fraction must be within 0..1")
        _split_url(url)
        self.url = url
        self.host_header = host_header
        self.rate_rps = rate_rps
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.header_fraction = header_fraction
        self.header = header
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._issued = 0
        self._started_at = 0.0
        self._results: list[Response] = []

    def start(self) -> LoadGenerator:
        if self._threads:
            raise RuntimeError("load generator already started")
        self._started_at = time.monotonic()
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._worker, name=f"loadgen-{i}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def _next_ticket(self) -> tuple[float, bool] | None:
        """(scheduled monotonic time, send header?) for the next request, or None when done."""
        with self._lock:
            if self._stop.is_set() or self._issued >= self.max_requests:
                return None
            due = self._started_at + self._issued / self.rate_rps
            if due >= self._started_at + self.max_seconds:
                return None
            self._issued += 1
            return due, self._rng.random() < self.header_fraction

    def _worker(self) -> None:
        client = _Client(self.url, self.timeout)
        deadline = self._started_at + self.max_seconds
        try:
            while True:
                ticket = self._next_ticket()
                if ticket is None:
                    return
                due, with_header = ticket
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                if time.monotonic() >= deadline:
                    return
                headers = {"Host": self.host_header}
                if with_header:
                    headers[self.header[0]] = self.header[1]
                sent_at, t0 = time.time(), time.monotonic()
                status, version, error = client.get(headers)
                record = Response(status, version, with_header, sent_at, time.monotonic() - t0, error)
                with self._lock:
                    self._results.append(record)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the workers (they end by themselves at max_requests / max_seconds)."""
        end = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if end is None else max(0.0, end - time.monotonic()))

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def results(self) -> list[Response]:
        with self._lock:
            return list(self._results)

    def summary(self) -> dict[tuple[str | None, int], int]:
        """Response counts per (version, status); status 0 means no HTTP answer."""
        return dict(Counter((r.version, r.status) for r in self.results))

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
