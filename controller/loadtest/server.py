"""The load tester's HTTP API, on the same hardened server as the controller's /metrics (`EndpointServer`: request
heads under a total deadline, at most 64 waiting connections, at most 8 handler threads, a total write deadline).

    POST /start   a Ramp hook payload -> 202 {"id", "started", "run"} (started false: that rollout+step already
                  runs), 400 {"error"} with the reason, 401 bad or missing signature, 429 at capacity
    POST /stop    {"id": ...} or a hook payload (every run of its namespace/rollout) -> 200 {"stopped": [ids]}
    GET  /runs    {"runs": [...]}: running first, then the last ended ones (sent, ok, errors by code, started, ends)
    GET  /healthz 200 while the server runs; /readyz 503 when the secret file cannot be used; /metrics

A POST body must come with a Content-Length of at most 64 KiB and arrive within the header timeout (5 s) after the
head: a client that dribbles its body is cut off like one that dribbles its head. With a secret file, every POST
must carry `X-Ramp-Signature-256: sha256=<HMAC-SHA256(secret, body)>` (the signature Ramp's hooks send); the file
is re-read when rotated, and a file that cannot be used refuses every POST (503) rather than accepting unsigned
ones.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.analysis.credentials import CredentialError, CredentialFile
from controller.deadline import Deadline, DeadlineExceeded
from controller.http_endpoints import EndpointServer
from controller.loadtest.request import MAX_BODY_BYTES, BadRequest, parse_json_object, parse_start
from controller.loadtest.tester import AtCapacity, LoadTester
from controller.webhook_signing import SIGNATURE_HEADER, verify

log = structlog.get_logger("ramp.loadtest")
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
_PHRASES = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


def _reply(status: int, body: Any, head_only: bool = False, extra: dict[str, str] | None = None) -> bytes:
    if isinstance(body, bytes | str):
        data, kind = (body.encode() if isinstance(body, str) else body), TEXT
    else:
        data, kind = (json.dumps(body, sort_keys=True) + "\n").encode(), JSON
    if extra and "Content-Type" in extra:
        kind = extra.pop("Content-Type")
    lines = [f"HTTP/1.0 {status} {_PHRASES.get(status, 'Unknown')}", f"Content-Type: {kind}",
             f"Content-Length: {len(data)}", "Connection: close", "Cache-Control: no-store",
             *(f"{k}: {v}" for k, v in (extra or {}).items())]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (b"" if head_only else data)


def _error(status: int, reason: str, extra: dict[str, str] | None = None) -> bytes:
    return _reply(status, {"error": reason}, extra=extra)


class _Refused(Exception):
    def __init__(self, reply: bytes) -> None:
        self.reply = reply


class LoadTestServer(EndpointServer):
    def __init__(
        self, tester: LoadTester, host: str = "0.0.0.0", port: int = 8080, secret: CredentialFile | None = None,
        **limits: Any,
    ) -> None:  # fmt: skip
        super().__init__(tester.registry, lambda: (True, "ok"), self._ready, host, port, **limits)
        self.tester = tester
        self.secret = secret

    def _ready(self) -> tuple[bool, str]:
        if self.secret is None:
            return True, "ready"
        try:
            self.secret.read()
        except CredentialError as exc:
            return False, str(exc)
        return True, "ready"

    def _handle(self, sock: socket.socket, head: bytes) -> None:
        """One request: the head the front thread read, the body read here under a total deadline, the answer."""
        try:
            try:
                reply = self._answer(sock, head)
            except _Refused as refused:
                reply = refused.reply
            except Exception:
                log.exception("load tester request failed")
                reply = _error(500, "internal error")
            sock.settimeout(self.write_timeout)
            sock.sendall(reply)
            self.stats.served += 1
        except OSError:
            pass
        finally:
            try:
                sock.close()
            finally:
                self._slots.release()

    def _answer(self, sock: socket.socket, raw: bytes) -> bytes:
        end, skip = raw.find(b"\r\n\r\n"), 4
        if end < 0:
            end, skip = raw.find(b"\n\n"), 2
        head, rest = (raw[:end], raw[end + skip :]) if end >= 0 else (raw, b"")
        lines = head.decode("latin-1").splitlines()
        parts = lines[0].split() if lines else []
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _error(400, "bad request line")
        method, path = parts[0], parts[1].split("?", 1)[0]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if method == "POST" and path in ("/start", "/stop"):
            body = self._body(sock, headers, rest)
            self._check_signature(body, headers)
            return self._start_run(body) if path == "/start" else self._stop_runs(body)
        if path in ("/start", "/stop"):
            return _error(405, f"{path} takes POST", {"Allow": "POST"})
        if method not in ("GET", "HEAD"):
            return _error(405, f"{path} takes GET or HEAD", {"Allow": "GET, HEAD"})
        head_only = method == "HEAD"
        if path == "/runs":
            return _reply(200, {"runs": self.tester.runs()}, head_only)
        if path == "/metrics":
            return _reply(200, generate_latest(self.registry), head_only, {"Content-Type": CONTENT_TYPE_LATEST})
        check = self.checks.get(path)
        if check is None:
            return _reply(404, "not found\n", head_only)
        ok, detail = check()
        return _reply(200 if ok else 503, detail + "\n", head_only)

    def _body(self, sock: socket.socket, headers: dict[str, str], body: bytes) -> bytes:
        if "transfer-encoding" in headers:
            raise _Refused(_error(411, "send the body with a Content-Length (no chunked encoding)"))
        length_text = headers.get("content-length", "")
        if not length_text.isdigit() or len(length_text) > 9:
            raise _Refused(_error(411, "a Content-Length is required"))
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise _Refused(_error(413, f"body larger than {MAX_BODY_BYTES} bytes"))
        deadline = Deadline(self.header_timeout)
        chunks = [body[:length]]
        size = len(chunks[0])
        try:
            while size < length:
                sock.settimeout(deadline.timeout())
                chunk = sock.recv(min(65536, length - size))
                if not chunk:
                    raise _Refused(_error(400, "body shorter than its Content-Length"))
                chunks.append(chunk)
                size += len(chunk)
        except (DeadlineExceeded, TimeoutError):
            raise _Refused(_error(408, "body not received in time")) from None
        return b"".join(chunks)

    def _check_signature(self, body: bytes, headers: dict[str, str]) -> None:
        if self.secret is None:
            return
        try:
            secret = self.secret.read().encode()
        except CredentialError as exc:
            log.error("cannot check signatures", error=str(exc))
            raise _Refused(_error(503, "the load tester cannot read its secret file: see its log")) from None
        if not verify(body, secret, headers.get(SIGNATURE_HEADER.lower())):
            raise _Refused(_error(401, f"missing or wrong {SIGNATURE_HEADER} (HMAC-SHA256 of the body)"))

    def _start_run(self, body: bytes) -> bytes:
        try:
            request = parse_start(body, self.tester.caps)
        except BadRequest as exc:
            return _error(400, str(exc))
        try:
            run, started = self.tester.start(request)
        except AtCapacity as exc:
            return _error(429, str(exc), {"Retry-After": "10"})
        return _reply(202, {"id": run.id, "started": started, "run": run.status()})

    def _stop_runs(self, body: bytes) -> bytes:
        try:
            data = parse_json_object(body)
        except BadRequest as exc:
            return _error(400, str(exc))
        run_id, rollout, namespace = data.get("id"), data.get("rollout"), data.get("namespace") or ""
        if isinstance(run_id, str) and len(run_id) <= 200:
            stopped = self.tester.stop(run_id=run_id)
        elif isinstance(rollout, str) and isinstance(namespace, str):
            stopped = self.tester.stop(rollout=rollout, namespace=namespace)
        else:
            return _error(400, "give the run's id, or a payload with rollout (and namespace)")
        return _reply(200, {"stopped": [run.id for run in stopped]})
