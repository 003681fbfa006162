"""Envoy admin API reads bounded by a TOTAL deadline and a size cap.

Every call is one `controller.http_deadline.bounded_request`: connect, request, status line, headers and
body (chunked or not) finish within min(`cap`, the caller's deadline) however slowly the admin answers,
and the answer is cut off at `max_bytes`. No proxies, no redirects, no credentials; URLs in messages are
redacted (`controller.redact.redact_url`).
"""

from __future__ import annotations

import json
from typing import Any

from controller.deadline import Deadline, DeadlineExceeded
from controller.http_deadline import HttpError
from controller.http_deadline import bounded_request as _exchange
from controller.redact import redact_url

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_MAX_BYTES",
    "EnvoyAdminError",
    "admin_get",
    "admin_get_json",
    "bounded_request",
]

DEFAULT_MAX_BYTES = 8 * 1024 * 1024  # a config_dump of many services fits; anything larger is not Envoy's
DEFAULT_CALL_TIMEOUT = 2.0


class EnvoyAdminError(HttpError):
    """The Envoy admin API could not be read (unreachable, slow, oversized, malformed or non-200)."""


def _deadline_for(deadline: Deadline | None, cap: float) -> Deadline:
    """A deadline that ends at `cap` seconds from now or at `deadline`, whichever comes first."""
    if deadline is None:
        return Deadline(cap)
    try:
        return Deadline(deadline.timeout(cap))
    except DeadlineExceeded as exc:
        raise EnvoyAdminError(f"no time left for the Envoy admin call ({exc})") from None


def _shown(url: str) -> str:
    """The URL as shown in messages: redacted first, then cut short."""
    return redact_url(url)[:240]


def bounded_request(
    url: str,
    deadline: Deadline | None = None,
    cap: float = DEFAULT_CALL_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One HTTP exchange; (status, body) of any complete answer. The whole call ends within
    min(`cap`, `deadline`). Raises EnvoyAdminError when there is no time left, the connection fails,
    or the answer is slow, oversized or not HTTP."""
    total = _deadline_for(deadline, cap)
    sent = {"Accept": "application/json", **(headers or {})}
    try:
        answer = _exchange(method, url, deadline=total, headers=sent, body=body, max_bytes=max_bytes)
    except HttpError as exc:
        raise EnvoyAdminError(f"{_shown(url)}: {exc}") from None
    return answer.status, answer.body


def admin_get(
    url: str,
    deadline: Deadline | None = None,
    cap: float = DEFAULT_CALL_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """GET `url`; the body of a 200 answer, within min(`cap`, `deadline`). EnvoyAdminError otherwise."""
    status, body = bounded_request(url, deadline, cap, max_bytes)
    if status != 200:
        raise EnvoyAdminError(f"{_shown(url)}: HTTP {status}: {body[:200]!r}")
    return body


def admin_get_json(
    url: str,
    deadline: Deadline | None = None,
    cap: float = DEFAULT_CALL_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Any]:
    """`admin_get` parsed as a JSON object; EnvoyAdminError when it is not one."""
    body = admin_get(url, deadline, cap, max_bytes)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise EnvoyAdminError(f"{_shown(url)}: answer is not JSON ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(data, dict):
        raise EnvoyAdminError(f"{_shown(url)}: answer is JSON {type(data).__name__}, expected an object")
    return data
