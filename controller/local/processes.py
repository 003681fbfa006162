"""Managed subprocesses for the local stack.

Every process runs in its own process group (so stopping it also stops anything it
forked), logs stdout+stderr to a file in a work dir, and is stopped with SIGTERM,
then SIGKILL after a grace period. `ProcessGroup` stops everything it started,
in reverse start order, even when the body raises (KeyboardInterrupt included).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from controller.deadline import Deadline
from controller.http_deadline import HttpError, bounded_request
from controller.redact import redact_url


class ProcessError(RuntimeError):
    """A managed process failed to start, died, or never became ready."""


class ManagedProcess:
    """One subprocess in its own process group, logging to `<work_dir>/<name>.log`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        work_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        inherit_env: bool = True,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.work_dir = Path(work_dir)
        self.log_path = self.work_dir / f"{name}.log"
        self.cwd = cwd
        merged: dict[str, str] = dict(os.environ) if inherit_env else {}
        merged.update(env or {})
        self.env = merged
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> ManagedProcess:
        if self._proc is not None:
            raise ProcessError(f"{self.name} was already started")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # own session => own process group
            )
        except OSError as exc:
            self._log.close()
            self._log = None
            raise ProcessError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        return self

    def log_tail(self, max_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode(errors="replace")

    def check_alive(self) -> None:
        """Raise ProcessError (with the log tail) if the process has exited."""
        if self._proc is None:
            raise ProcessError(f"{self.name} was never started")
        code = self._proc.poll()
        if code is not None:
            raise ProcessError(
                f"{self.name} exited with code {code}; log {self.log_path}:\n{self.log_tail()}"
            )

    def wait_http_ready(
        self,
        url: str,
        timeout: float,
        accept: Callable[[int, bytes], bool] | None = None,
        interval: float = 0.05,
    ) -> None:
        """Poll `url` until it answers 200 (or `accept(status, body)`); fail fast if the process dies."""
        wait_http_ready(url, timeout, accept=accept, interval=interval, process=self)

    def stop(self, grace: float = 3.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; returns the exit code."""
        proc = self._proc
        code: int | None = None
        if proc is not None:
            code = proc.poll()
            if code is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    code = proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
                    code = proc.wait(timeout=5.0)
            # Reap stragglers the process may have left in its group.
            _signal_group(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


HTTP_MAX_BYTES = 64 * 1024 * 1024


def http_get(url: str, timeout: float = 2.0, max_bytes: int = HTTP_MAX_BYTES) -> tuple[int, bytes]:
    """GET `url` on loopback without proxies; (status, body); HTTP errors are returned, not raised.

    `timeout` bounds the WHOLE call (a slow-dripping server cannot stretch it); a connection failure,
    a timeout or a malformed or oversized answer raises OSError."""
    try:
        answer = bounded_request("GET", url, deadline=Deadline(timeout), max_bytes=max_bytes)
    except HttpError as exc:
        raise OSError(f"{redact_url(url)[:240]}: {exc}") from None
    return answer.status, answer.body


def wait_http_ready(
    url: str,
    timeout: float,
    accept: Callable[[int, bytes], bool] | None = None,
    interval: float = 0.05,
    process: ManagedProcess | None = None,
) -> None:
    """Poll `url` until `accept(status, body)` (default: status 200) or raise ProcessError."""
    check = accept or (lambda status, _body: status == 200)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if process is not None:
            process.check_alive()
        try:
            status, body = http_get(url, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            if check(status, body):
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            who = f"{process.name} " if process is not None else ""
            tail = f"\nlog {process.log_path}:\n{process.log_tail()}" if process is not None else ""
            raise ProcessError(f"{who}not ready at {url} after {timeout:.1f}s (last: {last}){tail}")
        time.sleep(interval)


class ProcessGroup:
    """Starts processes and stops all of them (reverse order) on close / context exit."""

    def __init__(self, work_dir: Path, grace: float = 3.0) -> None:
        self.work_dir = Path(work_dir)
        self.grace = grace
        self.processes: list[ManagedProcess] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.work_dir, env=env, cwd=cwd)
        self.processes.append(proc)  # registered first: stopped even if start() half-fails
        return proc.start()

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        while self.processes:
            proc = self.processes.pop()
            try:
                proc.stop(self.grace)
            except BaseException as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise ProcessError(f"errors while stopping processes: {errors}")

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
