"""One hook call: POST the JSON payload, within a TOTAL deadline (retries included), signed when a secret is set.

Why each rule:
- the deadline is total (controller.http_deadline): a receiver that dribbles its answer byte by byte, or
  never answers, cannot hold a tick; retries and their backoff sleeps fit inside the same deadline;
- retries (jittered exponential backoff, at most `hook.retries`) follow transport failures, timeouts of an
  attempt, 5xx, 408 and 429; another 4xx or a 3xx is a definite answer and is not retried;
- redirects are not followed (a 3xx is a failure): a hook's URL is the one in the spec, and a redirect would
  carry a signed body to a host nobody reviewed;
- the answer is read up to MAX_ANSWER_BYTES and never interpreted: a 2xx with any body is success, everything
  else (3xx, 4xx, 5xx, timeout, reset, garbage, oversized) is a failure with a one-line reason;
- a reason never holds the secret, the URL's query string (tokens live there) or bytes of the answer;
- the secret is read through CredentialFile, re-read when the file changes (a rotated Kubernetes Secret).

`ok=None` means "not answered, through no fault of the receiver": the caller's deadline (the tick's) left too
little time, or the secret file cannot be used. The engine holds on it and never counts it as a failed check.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from controller.analysis.credentials import CredentialError, CredentialFile
from controller.deadline import Deadline
from controller.hooks.results import HookAnswer
from controller.http_deadline import HttpError, HttpTimeout, HttpTooLarge, bounded_request
from controller.redact import redact_text
from controller.spec_hooks import Hook
from controller.webhook_signing import SIGNATURE_HEADER, sign

MAX_ANSWER_BYTES = 64 * 1024
BACKOFF_BASE = 0.2  # seconds before the first retry (then doubled), times a jitter in [0.5, 1)
BACKOFF_CAP = 5.0
MAX_REASON = 200
USER_AGENT = "ramp-hooks/1"
_RETRY_STATUSES = frozenset({408, 429})


def public_url(url: str) -> str:
    """The URL as it may be shown: scheme, host, port and path; no userinfo, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(invalid URL)"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def _clean(text: str, secrets: list[str]) -> str:
    """One printable line without any of `secrets`, at most MAX_REASON characters (redacted before cut)."""
    text = redact_text(text, [s for s in secrets if s])
    line = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(line.split())[:MAX_REASON]


class HookClient:
    """Calls hooks. Thread-safe: one client serves a pool of concurrent calls (the secret files are shared)."""

    def __init__(
        self,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._max_answer = max_answer_bytes
        self._secrets: dict[str, CredentialFile] = {}
        self._lock = threading.Lock()

    def _secret(self, path: str) -> CredentialFile:
        with self._lock:
            found = self._secrets.get(path)
            if found is None:
                found = self._secrets[path] = CredentialFile(path, "hook secret")
            return found

    def _backoff(self, attempt: int) -> float:
        with self._lock:
            jitter = self._rng.uniform(0.5, 1.0)
        return min(BACKOFF_CAP, BACKOFF_BASE * 2.0**attempt) * jitter

    def call(self, hook: Hook, body: bytes, deadline: Deadline | None = None) -> HookAnswer:
        """POST `body` to the hook within min(hook.timeout, `deadline`); never raises.

        `deadline` is the caller's (the tick's): when it is shorter than the hook's own timeout and runs out
        before any answer arrived, the answer is `ok=None` (not answered), not a failure of the receiver."""
        own = Deadline(hook.timeout)
        limited = deadline is not None and deadline.remaining() < own.remaining()
        total = deadline if limited and deadline is not None else own
        secrets = [hook.url, urlsplit(hook.url).query]
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "X-Ramp-Hook": hook.name,
                   "X-Ramp-Delivery": uuid.uuid4().hex}  # fmt: skip
        if hook.secret_file is not None:
            source = self._secret(hook.secret_file)
            try:
                secret = source.read()
            except CredentialError as exc:  # our side cannot sign: never send unsigned, never blame the receiver
                return HookAnswer(hook.name, None, _clean(f"not called: {exc}", secrets + source.secrets()))
            secrets.append(secret)
            headers[SIGNATURE_HEADER] = sign(body, secret.encode("utf-8"))
        failures: list[str] = []
        answered = False
        status: int | None = None
        for attempt in range(hook.retries + 1):
            if total.remaining() <= 0:
                break
            retry, reason, code = self._attempt(hook, body, headers, total)
            if code is not None:
                answered, status = True, code
                if 200 <= code < 300:
                    return HookAnswer(hook.name, True, f"HTTP {code}", attempt + 1, code)
            elif not isinstance(reason, _Timeout):
                answered = True  # a reset or garbage is the receiver's doing; a timeout may be ours
            failures.append(str(reason))
            if not retry or attempt == hook.retries:
                break
            pause = self._backoff(attempt)
            if pause >= total.remaining():
                break  # no time for another attempt after the pause
            self._sleep(pause)
        attempts = len(failures)
        if not failures:
            why = f"no time left to call it (deadline of {total.seconds:.3g}s)"
        else:
            why = failures[-1] + (f" after {attempts} attempts" if attempts > 1 else "")
        if limited and not answered:
            return HookAnswer(hook.name, None, _clean(f"not answered before the tick's deadline: {why}", secrets),
                              attempts)  # fmt: skip
        return HookAnswer(hook.name, False, _clean(why, secrets), attempts, status)

    def _attempt(
        self, hook: Hook, body: bytes, headers: dict[str, str], total: Deadline
    ) -> tuple[bool, str, int | None]:
        """(retry?, reason, HTTP status or None when no status arrived)."""
        try:
            answer = bounded_request("POST", hook.url, deadline=Deadline(total.remaining()), headers=headers, body=body,
                                     max_bytes=self._max_answer)  # fmt: skip
        except HttpTimeout:
            return True, _Timeout(f"timeout: no complete answer within {total.seconds:.3g}s"), None
        except HttpTooLarge:
            return False, f"answer larger than {self._max_answer} bytes", None
        except HttpError as exc:
            return True, f"no answer: {_transport_reason(str(exc))}", None
        code = answer.status
        if 200 <= code < 300:
            return False, "", code
        if 300 <= code < 400:
            return False, f"HTTP {code} (redirects are not followed)", code
        return code >= 500 or code in _RETRY_STATUSES, f"HTTP {code}", code


_OWN_ERRORS = frozenset({
    "OSError", "ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "ConnectionAbortedError",
    "BrokenPipeError", "gaierror", "herror", "SSLError", "SSLCertVerificationError", "SSLEOFError",
    "RemoteDisconnected", "TimeoutError",
})  # fmt: skip


def _transport_reason(text: str) -> str:
    """The client's own words about a failed exchange. Errors raised by the OS or TLS (connection refused,
    reset, certificate) keep their message; a protocol error's message quotes the peer's bytes (a bad status
    line, a header), which are never shown: only the kind of error is."""
    name, colon, _ = text.partition(":")
    if not colon or " " in name or name in _OWN_ERRORS:
        return text
    return f"malformed answer ({name})"


class _Timeout(str):
    """A failure reason that says no answer arrived in time (so it may be the caller's deadline, not the hook)."""
