"""Prometheus' HTTP query API under a TOTAL deadline, with a bounded answer, authentication and no leaked secret.

Why not prometheus-api-client (or requests, which it uses) here: their `timeout` bounds each socket
operation, not the call, so a Prometheus that sends its answer one byte per second keeps a tick waiting
for ever. Queries go through `controller.http_deadline.bounded_request`, whose status line, headers and
body together (DNS, connect and TLS included) finish within the query's total deadline.

An answer is accepted only as Prometheus' documented envelope: HTTP 200, a JSON object with
`status: success` and `data: {resultType: vector, result: [...]}` (`matrix` for a range query, `query_range`,
which `ramp report` uses), at most `max_response_bytes`. Anything else raises `PrometheusError` with a reason
meant for users (redacted): the caller turns it into *no data*.

Credentials (`credentials`): a bearer token file, a basic-auth file, or userinfo in the URL, sent as basic
auth and never shown.
"""

from __future__ import annotations

import json
import math
import ssl
import threading
import urllib.parse
from typing import Any

from controller.analysis.credentials import CredentialError, Credentials, PrometheusError
from controller.analysis.prometheus_parse import collector_paused
from controller.deadline import Deadline, DeadlineExceeded
from controller.http_deadline import HttpError, HttpTimeout, HttpTooLarge, bounded_request
from controller.redact import redact_text, redact_url, url_secrets

__all__ = ["CredentialError", "Credentials", "PrometheusAnswerError", "PrometheusError", "PrometheusHTTP"]

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_RANGE_POINTS = 11_000  # Prometheus refuses range queries of more points per series


class PrometheusAnswerError(PrometheusError):
    """Prometheus answered, but not with a usable result (HTTP error, not JSON, wrong shape, too large)."""


class PrometheusHTTP:
    """POSTs instant queries to `<url>/api/v1/query`; `query` returns `data.result` (items unchecked).
    `query_range` POSTs to `<url>/api/v1/query_range` and returns the matrix's `data.result` (items unchecked).

    `answers` and `response_bytes` count the answers received (any status) and their body bytes, for /metrics
    and the scale benchmark."""

    def __init__(
        self,
        url: str,
        *,
        credentials: Credentials | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Prometheus URL must be http(s)://host[:port][/path], got {redact_url(url)}")
        self.display_url = redact_url(url)
        self._url_secrets = url_secrets(url)
        userinfo = None
        if parts.username is not None:
            userinfo = (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
        if credentials is None:
            credentials = Credentials(url_userinfo=userinfo)
        elif userinfo is not None:
            raise ValueError("choose one Prometheus authentication: user:password in the URL or a credential file")
        self.credentials = credentials
        self._port = parts.port or (443 if parts.scheme == "https" else 80)  # a bad port raises ValueError here
        hostport = parts.netloc.rsplit("@", 1)[-1]  # credentials go in a header, never in the request line
        self._url = urllib.parse.urlunsplit((parts.scheme, hostport, parts.path.rstrip("/") + "/api/v1/query", "", ""))
        self._range_url = self._url + "_range"
        self._query_params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        self._context = (tls_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self.max_response_bytes = max_response_bytes
        self.answers = 0
        self.response_bytes = 0
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PrometheusHTTP({self.display_url!r})"

    def secrets(self) -> list[str]:
        return self._url_secrets + self.credentials.secrets()

    def redact(self, text: str) -> str:
        return redact_text(text, self.secrets())

    def query(self, promql: str, deadline: Deadline) -> list[Any]:
        """`data.result` of an instant query; PrometheusError (redacted reason) for anything else."""
        return self._result(*self._answer(self._url, promql, (), deadline))

    def query_range(self, promql: str, start: float, end: float, step: float, deadline: Deadline) -> list[Any]:
        """`data.result` of a range query (a matrix) from `start` to `end` (Unix seconds) every `step` seconds;
        PrometheusError (redacted reason) for anything else. ValueError for a range Prometheus would refuse
        (not finite, end before start, step not positive, more than MAX_RANGE_POINTS points)."""
        if not all(math.isfinite(x) for x in (start, end, step)) or start < 0 or end < start or step <= 0:
            raise ValueError(f"not a range: start={start!r} end={end!r} step={step!r}")
        if (end - start) / step + 1 > MAX_RANGE_POINTS:
            raise ValueError(f"{(end - start) / step + 1:.0f} points per series: more than {MAX_RANGE_POINTS}")
        extra = (("start", f"{start:.3f}"), ("end", f"{end:.3f}"), ("step", f"{step:.3f}"))
        return self._result(*self._answer(self._range_url, promql, extra, deadline), result_type="matrix")

    def _answer(
        self, url: str, promql: str, extra: tuple[tuple[str, str], ...], deadline: Deadline
    ) -> tuple[int, bytes]:
        try:
            return self._post(promql, deadline, url, extra)
        except PrometheusError:
            raise
        except HttpTooLarge as exc:
            raise PrometheusAnswerError(str(exc)) from None
        except (HttpTimeout, DeadlineExceeded):
            raise PrometheusError(f"no complete answer within {deadline.seconds:.3g}s") from None
        except HttpError as exc:  # its reason already names the transport failure
            raise PrometheusError(self.redact(str(exc))) from None
        except Exception as exc:  # anything else: a reason, never a traceback
            raise PrometheusError(self.redact(f"{type(exc).__name__}: {exc}")) from None

    def _post(
        self, promql: str, deadline: Deadline, url: str | None = None, extra: tuple[tuple[str, str], ...] = ()
    ) -> tuple[int, bytes]:
        header = self.credentials.header()
        form = [*self._query_params, ("query", promql), *extra,
                ("timeout", f"{max(0.001, deadline.timeout()):.3f}")]  # fmt: skip
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
                   "User-Agent": "ramp-controller"}  # fmt: skip
        if header is not None:
            headers["Authorization"] = header
        answer = bounded_request(
            "POST", url or self._url, deadline=deadline, headers=headers, body=urllib.parse.urlencode(form).encode(),
            max_bytes=self.max_response_bytes, tls_context=self._context,
        )  # fmt: skip
        with self._count_lock:
            self.answers += 1
            self.response_bytes += len(answer.body)
        return answer.status, answer.body

    def _result(self, status: int, body: bytes, result_type: str = "vector") -> list[Any]:
        try:
            with collector_paused():  # megabytes of samples at thousands of rollouts
                answer = json.loads(body)
        except Exception:  # invalid JSON, bad UTF-8, absurd nesting or digits: all "not JSON"
            answer = None
        if status != 200:
            detail = ""
            if isinstance(answer, dict) and isinstance(answer.get("error"), str):
                detail = f": {answer.get('errorType', 'error')}: {answer['error']}"
            raise PrometheusAnswerError(self.redact(f"HTTP {status}{detail}")[:300])
        if not isinstance(answer, dict):
            raise PrometheusAnswerError(f"answer is not a JSON object ({len(body)} bytes)")
        if answer.get("status") != "success":
            error = answer.get("error")
            detail = f": {error}" if isinstance(error, str) else ""
            raise PrometheusAnswerError(self.redact(f"status is {answer.get('status')!r}, not 'success'{detail}")[:300])
        data = answer.get("data")
        if not isinstance(data, dict):
            raise PrometheusAnswerError("answer has no 'data' object")
        if data.get("resultType") != result_type:
            raise PrometheusAnswerError(
                self.redact(f"resultType is {data.get('resultType')!r}, not {result_type!r}")[:200]
            )
        result = data.get("result")
        if not isinstance(result, list):
            raise PrometheusAnswerError("answer has no 'data.result' list")
        return result
