"""The Chrome DevTools Protocol over one websocket: calls with deadlines, events read by one thread and handed
to each target session's listener, and the protocol's values turned into Python's. Used by tests/browser/chromium.py.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websocket

MAX_TEXT = 4000  # characters kept of one console message

Listener = Callable[[str, dict[str, Any]], None]


class ChromiumError(RuntimeError):
    """Chromium failed to start, died, or a DevTools call answered with an error."""


class ChromiumTimeout(TimeoutError):
    """Chromium or a page did not answer or get ready in time."""


class JavaScriptError(ChromiumError):
    """An evaluated expression threw."""


@dataclass(frozen=True)
class ConsoleMessage:
    level: str  # console: log/info/warning/error/assert/...; log entries: verbose/info/warning/error
    source: str  # "console" (console.* call), "exception" (uncaught), "log" (browser: network, security...), "dialog"
    text: str

    @property
    def is_error(self) -> bool:
        return self.level in ("error", "assert") or self.source == "exception"


def clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}… ({len(text) - MAX_TEXT} more characters)"


def object_text(obj: Any) -> str:
    """A Runtime.RemoteObject as a console would show it."""
    if not isinstance(obj, dict):
        return repr(obj)
    if "value" in obj:
        value = obj["value"]
        return value if isinstance(value, str) else json.dumps(value)
    return str(obj.get("unserializableValue") or obj.get("description") or obj.get("type", "?"))


def location(url: Any, line: Any) -> str:
    if not url:
        return ""
    return f" ({url}:{line + 1})" if isinstance(line, int) else f" ({url})"


def js_value(result: dict[str, Any]) -> Any:
    if "unserializableValue" in result:  # NaN, Infinity, -Infinity, -0, 12n
        raw = str(result["unserializableValue"])
        if raw.endswith("n") and raw[:-1].lstrip("-").isdigit():
            return int(raw[:-1])
        return float(raw.replace("Infinity", "inf"))
    return result.get("value")


def output_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_bytes()[-20000:].decode("utf-8", "replace")
    except OSError as exc:
        return f"(no output: {exc})"
    kept = [line for line in text.splitlines() if line.strip() and "dbus" not in line]  # no system bus here: noise
    return "\n".join(kept[-lines:]) or "(nothing but D-Bus noise)"


class Connection:
    """One DevTools websocket: calls with deadlines, events dispatched per session by a reader thread."""

    def __init__(self, url: str, timeout: float, on_dead: Callable[[], str]) -> None:
        self._ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True, enable_multithread=True)
        self._ws.settimeout(None)  # the reader blocks; close() shuts the socket down to end it
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self._listeners: dict[str, Listener] = {}
        self._on_dead = on_dead
        self.dead: str | None = None
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()

    def listen(self, session_id: str, listener: Listener | None) -> None:
        with self._lock:
            if listener is None:
                self._listeners.pop(session_id, None)
            else:
                self._listeners[session_id] = listener

    def _send(self, message_id: int, method: str, params: dict[str, Any] | None, session_id: str | None) -> None:
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        try:
            self._ws.send(json.dumps(message))
        except (OSError, websocket.WebSocketException) as exc:
            raise ChromiumError(f"DevTools {method}: the connection failed: {exc}; {self._on_dead()}") from exc

    def send(self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None) -> None:
        """Fire and forget: the answer is dropped (for calls made from an event listener, on the reader thread)."""
        self._send(next(self._ids), method, params, session_id)

    def call(
        self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The call's result, or ChromiumError (its error, or the connection died) or ChromiumTimeout."""
        done, answer = threading.Event(), list[dict[str, Any]]()
        with self._lock:
            if self.dead is not None:
                raise ChromiumError(f"DevTools {method}: the connection is closed ({self.dead})")
            message_id = next(self._ids)
            self._pending[message_id] = (done, answer)
        try:
            self._send(message_id, method, params, session_id)
            if not done.wait(timeout):
                raise ChromiumTimeout(f"DevTools {method} got no answer within {timeout:.1f}s")
        finally:
            with self._lock:
                self._pending.pop(message_id, None)
        if not answer:
            raise ChromiumError(f"DevTools {method}: the connection closed ({self.dead})")
        if "error" in answer[0]:
            error = answer[0]["error"]
            raise ChromiumError(
                f"DevTools {method} failed: {error.get('message')} ({error.get('code')})"
                + (f": {error['data']}" if error.get("data") else "")
            )
        result = answer[0].get("result", {})
        return result if isinstance(result, dict) else {}

    def _read(self) -> None:
        reason = "closed"
        try:
            while True:
                raw = self._ws.recv()
                message = json.loads(raw)
                if not isinstance(message, dict):
                    continue
                if "id" in message:
                    with self._lock:
                        slot = self._pending.get(message["id"])
                    if slot is not None:
                        slot[1].append(message)
                        slot[0].set()
                elif "method" in message:
                    with self._lock:
                        listener = self._listeners.get(str(message.get("sessionId", "")))
                    if listener is not None:
                        params = message.get("params")
                        listener(str(message["method"]), params if isinstance(params, dict) else {})
        except Exception as exc:  # socket closed or Chromium died: fail every waiting call at once
            reason = f"{type(exc).__name__}: {exc}".strip(": ")
        with self._lock:
            self.dead = f"{reason}; {self._on_dead()}"
            slots = list(self._pending.values())
        for done, _ in slots:
            done.set()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ws.shutdown()  # type: ignore[no-untyped-call]
        self._reader.join(timeout=5)
