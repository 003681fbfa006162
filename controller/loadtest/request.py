"""What load to send, read from a Ramp hook payload whose sender is not trusted.

The payload is the one every Ramp hook sends (`{"version": 1, "hook", "type", "rollout", "namespace", "service",
"target", "phase", "step", "steps", "weights", "header_routes": [{"header", "match", "value", "version"}], "reason",
"metadata": {...}, "at"}`); unknown fields are ignored, so a newer Ramp can add some. The load is described by the
hook's `metadata` (strings, since a spec's hook metadata is a string map; JSON numbers are accepted too):

- `url` (required): the target, `http://` only (inside a mesh the sidecar does TLS; no credentials in it);
- `rps` (default 10), `duration` (default 1m), `concurrency` (default 4), `timeout` per request (default 5s),
  `requests` (default and maximum: rps x duration): each at most the server's cap (`Caps`), never silently cut:
  a value above a cap is refused with the reason, so the sender learns that its plan does not fit;
- `header`: `name: value` sent with every request; by default the payload's header route to its `target`
  (`exact` or `prefix` match: the value itself matches). `none` sends no header. A regex route cannot be turned
  into a value: the request is refused and names the fix;
- `host`: a Host header (e.g. when `url` points at a gateway or a local Envoy);
- `method`: GET (default), HEAD or OPTIONS: load has no body, and a method that may change data (POST, PUT,
  DELETE, ...) is refused, since the load tester would repeat it thousands of times.

Every problem is a `BadRequest` with a one-line reason for a 400 answer; nothing here raises anything else on any
JSON value.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from controller.spec_hooks import check_webhook_url
from controller.spec_rules import format_seconds, header_name_problem, header_value_problem, parse_duration

MAX_BODY_BYTES = 64 * 1024
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_HOST = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?")
_METADATA_KEYS = frozenset({"url", "rps", "duration", "concurrency", "timeout", "requests", "header", "host", "method"})


class BadRequest(ValueError):
    """A payload that cannot start a run; the message is the reason sent back (it quotes no secret)."""


@dataclass(frozen=True)
class Caps:
    """Server-wide limits (flags of `ramp loadtest`) and the defaults of a run."""

    max_rps: float = 100.0
    max_duration: float = 600.0
    max_concurrency: int = 16
    max_runs: int = 4
    max_timeout: float = 30.0
    default_rps: float = 10.0
    default_duration: float = 60.0
    default_concurrency: int = 4
    default_timeout: float = 5.0

    def __post_init__(self) -> None:
        numbers = (self.max_rps, self.max_duration, self.max_timeout, self.max_concurrency, self.max_runs)
        if not all(math.isfinite(n) and n > 0 for n in numbers):
            raise ValueError("every cap must be a finite number > 0")

    @property
    def max_requests(self) -> int:
        """The most requests one run may send: the rate cap times the duration cap."""
        return math.ceil(self.max_rps * self.max_duration)


@dataclass(frozen=True)
class LoadRequest:
    rollout: str
    namespace: str
    step: int
    target: str
    url: str
    rps: float
    duration: float
    concurrency: int
    timeout: float
    max_requests: int
    header: tuple[str, str] | None
    host: str | None
    method: str

    @property
    def key(self) -> tuple[str, str, int]:
        """One run at a time per rollout and step: a hook retried or called again does not add load."""
        return self.namespace, self.rollout, self.step


def parse_json_object(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # ValueError covers bad UTF-8, bad JSON and over-long integers
        raise BadRequest("body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest(f"body must be a JSON object, got {type(data).__name__}")
    return data


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _name(payload: dict[str, Any], field: str, required: bool) -> str:
    value = payload.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or len(value) > 253 or not _NAME.fullmatch(value):
        raise BadRequest(f"{field} must be a lowercase DNS name (a-z, 0-9, '-', '.'), got {_shown(value)}")
    return value


def _number(metadata: dict[str, Any], field: str, default: float, cap: float, integer: bool = False) -> float:
    value = metadata.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRequest(f"metadata.{field} must be a number, got {_shown(value)}")
    try:
        number = float(value) if not isinstance(value, str) or len(value) <= 32 else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0 or (integer and number != int(number)):
        kind = "a whole number" if integer else "a finite number"
        raise BadRequest(f"metadata.{field} must be {kind} > 0, got {_shown(value)}")
    if number > cap:
        raise BadRequest(f"metadata.{field} {number:g} is above this load tester's limit of {cap:g}")
    return number


def _seconds(metadata: dict[str, Any], field: str, default: float, cap: float) -> float:
    value = metadata.get(field)
    if value is None:
        return default
    if isinstance(value, bool):
        raise BadRequest(f"metadata.{field} must be a duration like '30s', got {_shown(value)}")
    try:
        seconds = parse_duration(value, maximum=cap)
    except ValueError as exc:
        raise BadRequest(f"metadata.{field}: {exc}") from None
    if seconds <= 0:
        raise BadRequest(f"metadata.{field} must be > 0")
    if seconds > cap:
        raise BadRequest(f"metadata.{field} is above this load tester's limit of {format_seconds(cap)}")
    return seconds


def _url(metadata: dict[str, Any]) -> str:
    url = metadata.get("url")
    if not isinstance(url, str) or not url:
        raise BadRequest("metadata.url is required: the http:// URL to send load to")
    if len(url) > 2048:
        raise BadRequest("metadata.url is longer than 2048 characters")
    try:
        check_webhook_url(url)
    except ValueError as exc:
        raise BadRequest(f"metadata.{exc}") from None
    if not url.startswith("http://"):
        raise BadRequest("metadata.url must be http:// (inside the mesh the sidecar encrypts; no TLS client here)")
    if "#" in url:
        raise BadRequest("metadata.url must not have a fragment")
    return url


def _header_text(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name, value = name.strip().lower(), value.strip()
    if not sep:
        raise BadRequest(f"metadata.header must be 'name: value' or 'none', got {_shown(text)}")
    problem = header_name_problem(name) or header_value_problem(value)
    if problem:
        raise BadRequest(f"metadata.header: {problem}")
    return name, value


def _route_header(payload: dict[str, Any], target: str) -> tuple[str, str]:
    routes = payload.get("header_routes")
    if routes is None:
        routes = []
    if not isinstance(routes, list) or len(routes) > 50:
        raise BadRequest("header_routes must be a list of at most 50 routes")
    for route in routes:
        if not isinstance(route, dict) or route.get("version") != target or not target:
            continue
        name, value, match = route.get("header"), route.get("value"), route.get("match", "exact")
        if match not in ("exact", "prefix"):
            raise BadRequest(
                f"the header route to {target} is a {_shown(match)} match, whose value is not a header value: "
                "set metadata.header ('name: value')"
            )
        problem = header_name_problem(name) or header_value_problem(value)
        if problem:
            raise BadRequest(f"header_routes: {problem}")
        assert isinstance(name, str) and isinstance(value, str)
        return name, value
    raise BadRequest(
        f"the payload has no header route to the target {target or '(none)'} for this step: set metadata.header "
        "('name: value'), or 'none' to send load without a header"
    )


def _header(payload: dict[str, Any], metadata: dict[str, Any], target: str) -> tuple[str, str] | None:
    text = metadata.get("header")
    if text is None:
        return _route_header(payload, target)
    if not isinstance(text, str) or len(text) > 400:
        raise BadRequest("metadata.header must be a string 'name: value' (or 'none')")
    return None if text.strip().lower() == "none" else _header_text(text)


def _host(metadata: dict[str, Any]) -> str | None:
    host = metadata.get("host")
    if host is None:
        return None
    if not isinstance(host, str) or len(host) > 260 or not _HOST.fullmatch(host):
        raise BadRequest(f"metadata.host must be a lowercase DNS name with an optional :port, got {_shown(host)}")
    return host


def _method(metadata: dict[str, Any]) -> str:
    method = metadata.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in SAFE_METHODS:
        raise BadRequest(
            f"metadata.method must be one of {', '.join(SAFE_METHODS)} (load has no body, and a method that may "
            f"change data would be repeated thousands of times), got {_shown(method)}"
        )
    return method.upper()


def parse_start(body: bytes, caps: Caps) -> LoadRequest:
    """The run a `POST /start` body asks for, or `BadRequest` with the reason."""
    payload = parse_json_object(body)
    version = payload.get("version", 1)
    if version != 1 or isinstance(version, bool):
        raise BadRequest(f"unsupported payload version {_shown(version)} (this load tester reads version 1)")
    metadata = payload.get("metadata")
    if not isinstance(metadata, dict):
        raise BadRequest("metadata must be an object holding at least url (what load to send)")
    unknown = sorted(str(k) for k in metadata if k not in _METADATA_KEYS)
    if unknown:  # a typo ('rsp') would otherwise silently run the defaults
        raise BadRequest(f"unknown metadata keys {_shown(unknown)}; known: {', '.join(sorted(_METADATA_KEYS))}")
    step = payload.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= 1000:
        raise BadRequest(f"step must be a whole number 0-1000, got {_shown(step)}")
    target = _name(payload, "target", required=False)
    rps = _number(metadata, "rps", caps.default_rps, caps.max_rps)
    duration = _seconds(metadata, "duration", caps.default_duration, caps.max_duration)
    planned = math.ceil(rps * duration)
    return LoadRequest(
        rollout=_name(payload, "rollout", required=True),
        namespace=_name(payload, "namespace", required=False),
        step=step,
        target=target,
        url=_url(metadata),
        rps=rps,
        duration=duration,
        concurrency=int(_number(metadata, "concurrency", min(caps.default_concurrency, caps.max_concurrency),
                                caps.max_concurrency, integer=True)),
        timeout=_seconds(metadata, "timeout", min(caps.default_timeout, caps.max_timeout), caps.max_timeout),
        max_requests=int(_number(metadata, "requests", planned, planned, integer=True)),
        header=_header(payload, metadata, target),
        host=_host(metadata),
        method=_method(metadata),
    )  # fmt: skip
