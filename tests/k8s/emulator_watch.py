"""The emulator's change history: resourceVersions, watches from a resourceVersion, bookmarks, 410 Gone, lists.

A controller that watches must survive what a real apiserver does to watches: it streams the events after
the client's resourceVersion (or the current state first when none is given), sends BOOKMARK events that
carry only a newer resourceVersion, ends a watch at `timeoutSeconds` (and at its own request timeout),
drops connections, and answers `410 Gone` (reason Expired) for a resourceVersion older than its compaction
horizon: inside the stream as an ERROR event for a watch, as HTTP 410 for a list at an exact resourceVersion
or a continue token. `History` keeps every change with the object before and after it, so a watch can
resume at any retained resourceVersion and a list can be served as of one.

All methods run on the emulator's event loop (the harness in emulator.py wraps the hooks for test threads).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import copy
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from kmock._internal import k8s, rendering

Key = tuple[Any, str | None, str]  # (kmock resource, namespace, name)
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
_LIVENESS_CHECK = 0.25  # seconds: how often an idle watch checks that its client is still connected


def api_error(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> k8s.KubernetesError:
    """An error the emulator answers with a Status like the apiserver's (code, reason, message, details)."""
    return k8s.KubernetesError(status=code, reason=reason, message=message, details=details or {})


def gone(message: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "message": message,
            "reason": "Expired", "code": 410}  # fmt: skip


@dataclass(frozen=True)
class Change:
    rv: int
    key: Key
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]  # the object after the change (for DELETED: its last state, with the deletion's rv)
    before: dict[str, Any] | None  # the object before the change (None for ADDED)


@dataclass
class OpenWatch:
    request: rendering.Request
    dropped: bool = False
    abrupt: bool = False


@dataclass
class History:
    """Changes with their resourceVersions, the compaction horizon, and the open watches.

    Every method is synchronous (no await between assigning a resourceVersion and recording its change), so
    a watch never sees a resourceVersion before the change that carries it.
    """

    bookmark_interval: float = 1.0  # seconds between BOOKMARK events (the apiserver: about a minute)
    history_limit: int = 1000  # changes kept; older resourceVersions are compacted (410 Gone)
    max_watch_seconds: float | None = None  # the server ends every watch after this (its request timeout)
    changes: list[Change] = field(default_factory=list)
    latest: int = 1000
    compacted: int = 1000  # resourceVersions below this are gone
    watches: list[OpenWatch] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    def record(self, key: Key, kind: str, obj: dict[str, Any], before: dict[str, Any] | None) -> str:
        """Give `obj` the next resourceVersion (in place) and record its change; the resourceVersion."""
        self.latest += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.latest)
        self.changes.append(Change(self.latest, key, kind, copy.deepcopy(obj), before))
        excess = len(self.changes) - self.history_limit
        if excess > 0:
            self.compacted = self.changes[excess].rv - 1
            del self.changes[:excess]
        self._notify()
        return str(self.latest)

    def compact(self) -> int:
        """Forget every change: each resourceVersion older than the latest answers 410 Gone from now on."""
        self.changes.clear()
        self.compacted = self.latest
        self._notify()
        return self.latest

    def drop_watches(self, abrupt: bool = False) -> int:
        """End every open watch: cleanly (the chunked stream ends) or abruptly (the connection is reset)."""
        for watch in self.watches:
            watch.dropped, watch.abrupt = True, abrupt
        self._notify()
        return len(self.watches)

    def snapshot(self, current: dict[Key, dict[str, Any]], rv: int) -> dict[Key, dict[str, Any]]:
        """The objects as of resourceVersion `rv` (which must not be compacted): undo the later changes."""
        state = dict(current)
        for change in reversed(self.after(rv)):
            if change.before is None:
                state.pop(change.key, None)
            else:
                state[change.key] = change.before
        return state

    def after(self, rv: int) -> list[Change]:
        return self.changes[bisect.bisect_right(self.changes, rv, key=lambda c: c.rv) :]

    def start(self, params: Any) -> tuple[int, bool]:
        """(resourceVersion to stream after, whether to send the current objects first) for a watch's parameters;
        raises the apiserver's error for a malformed or future resourceVersion."""
        given = params.get("resourceVersion") or ""
        if given in ("", "0"):
            return self.latest, True
        try:
            rv = int(given)
        except ValueError:
            raise api_error(400, "BadRequest", f"invalid resource version: {given!r}") from None
        if rv > self.latest:
            raise api_error(504, "Timeout", f"Too large resource version: {rv}, current: {self.latest}",
                            {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                             "retryAfterSeconds": 1})  # fmt: skip
        return rv, params.get("sendInitialEvents") == "true"

    async def stream(
        self, request: rendering.Request, since: int, initial: list[dict[str, Any]] | None,
        matches: Callable[[Change], bool], bookmark: Callable[[int], dict[str, Any]],
    ) -> AsyncIterator[rendering.Payload]:  # fmt: skip
        """A watch's events after `since` (after the `initial` objects as ADDED events when not None)."""
        params = request.params
        bookmarks = params.get("allowWatchBookmarks") == "true"
        limits = [float(params["timeoutSeconds"])] if params.get("timeoutSeconds") else []
        limits += [self.max_watch_seconds] if self.max_watch_seconds is not None else []
        ends = time.monotonic() + min(limits) if limits else None
        watch = OpenWatch(request)
        self.watches.append(watch)
        try:
            yield b""  # the headers: a watch answers 200 at once, events follow
            for obj in initial or []:
                yield {"type": "ADDED", "object": obj}
            if initial is not None and bookmarks and params.get("sendInitialEvents") == "true":
                mark = bookmark(since)
                mark["metadata"]["annotations"] = {INITIAL_EVENTS_END: "true"}
                yield {"type": "BOOKMARK", "object": mark}
            async for event in self._follow(watch, since, matches, bookmark if bookmarks else None, ends):
                yield event
        finally:
            self.watches.remove(watch)

    async def _follow(
        self, watch: OpenWatch, since: int, matches: Callable[[Change], bool],
        bookmark: Callable[[int], dict[str, Any]] | None, ends: float | None,
    ) -> AsyncIterator[rendering.Payload]:  # fmt: skip
        next_bookmark = time.monotonic() + self.bookmark_interval
        transport = watch.request._raw_request.transport if watch.request._raw_request is not None else None
        while True:
            if since < self.compacted:
                first = self.changes[0].rv if self.changes else self.latest
                yield {"type": "ERROR", "object": gone(f"too old resource version: {since} ({first})")}
                return
            pending = self.after(since)
            for change in pending:
                if matches(change):
                    yield {"type": change.type, "object": change.obj}
                since = change.rv
            now = time.monotonic()
            if watch.dropped:
                if watch.abrupt and transport is not None:
                    transport.abort()
                return
            if (ends is not None and now >= ends) or (transport is not None and transport.is_closing()):
                return
            if bookmark is not None and now >= next_bookmark and not self.after(since):
                since = max(since, self.latest)  # nothing after `since`: the latest is as good
                yield {"type": "BOOKMARK", "object": bookmark(since)}
                next_bookmark = time.monotonic() + self.bookmark_interval
            wake = min(t for t in (ends, next_bookmark if bookmark else None, now + _LIVENESS_CHECK) if t is not None)
            woken = self._wake
            if not self.after(since) and not watch.dropped and since >= self.compacted:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), max(0.0, wake - time.monotonic()))


def encode_continue(rv: int, after: Key) -> str:
    raw = json.dumps({"rv": rv, "ns": after[1], "name": after[2]})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(raw["rv"]), (raw["ns"] or "", raw["name"])
    except (ValueError, KeyError, TypeError):
        message = "continue key is not valid: incorrect encoded start resourceVersion"
        raise api_error(400, "BadRequest", message) from None


def list_at(
    history: History, params: Any, current: dict[Key, dict[str, Any]], keep: Callable[[Key], bool]
) -> tuple[int, list[dict[str, Any]], str]:
    """(the list's resourceVersion, its items in key order, the continue token) for a LIST's parameters;
    `current` holds the live objects, `keep` selects the listed ones (resource, namespace, selectors)."""
    given, match = params.get("resourceVersion") or "", params.get("resourceVersionMatch") or ""
    token, start = params.get("continue") or "", ("", "")
    if token:
        at, start = decode_continue(token)
        if at < history.compacted:
            raise api_error(410, "Expired", "The provided continue parameter is too old to display a consistent "
                            "list result. You can start a new list without the continue parameter.")  # fmt: skip
    elif given not in ("", "0"):
        try:
            at = int(given)
        except ValueError:
            raise api_error(400, "BadRequest", f"invalid resource version: {given!r}") from None
        if at > history.latest:
            raise api_error(504, "Timeout", f"Too large resource version: {at}, current: {history.latest}")
        if match == "Exact" and at < history.compacted:
            raise api_error(410, "Expired", "The resourceVersion for the provided list is too old.")
        at = at if match == "Exact" else history.latest
    else:
        at = history.latest
    state = history.snapshot(current, at) if at < history.latest else current
    chosen = (k for k in state if keep(k) and (not token or (k[1] or "", k[2]) > start))
    keys = sorted(chosen, key=lambda k: (k[1] or "", k[2]))
    limit = int(params.get("limit") or 0)
    more = ""
    if limit > 0 and len(keys) > limit:
        keys = keys[:limit]
        more = encode_continue(at, keys[-1])
    return at, [copy.deepcopy(state[k]) for k in keys], more
