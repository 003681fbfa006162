"""Prometheus credentials: where the Authorization header comes from, and which values must never be shown.

- a bearer token file: the token on one line;
- a basic-auth file: `user:password` on one line;
- userinfo in the URL (`http://user:password@host/`), sent as basic auth.

Files are re-read whenever they change (mtime, size, inode: a rotated Kubernetes Secret swaps a symlink),
so rotated secrets work without a restart. A file that cannot be used gives a `CredentialError` naming the
file and what is wrong with it, never its content.
"""

from __future__ import annotations

import os
import threading
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

from controller.atomic_file import read_limited

MAX_CREDENTIAL_FILE_BYTES = 64 * 1024


class PrometheusError(Exception):
    """A query that gave no usable answer; the message is safe to show (no credential in it)."""


class CredentialError(PrometheusError):
    """A credential file could not be used; the message names the file, never its content."""


@dataclass
class _FileState:
    stamp: tuple[int, int, int, int] | None = None
    value: str = ""


class CredentialFile:
    """One line of a file, re-read whenever the file changes (rotation); `kind` names it in errors."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        self.path = Path(path)
        self.kind = kind
        self._state = _FileState()
        self._lock = threading.Lock()

    def _fail(self, why: str) -> CredentialError:
        return CredentialError(f"cannot use the {self.kind} file {self.path}: {why}")

    def read(self) -> str:
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise self._fail(exc.strerror or type(exc).__name__) from None
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino, info.st_dev)
        with self._lock:
            if stamp != self._state.stamp:
                self._state = _FileState(stamp, self._load(info.st_size))
            return self._state.value

    def _load(self, size: int) -> str:
        if size > MAX_CREDENTIAL_FILE_BYTES:
            raise self._fail(f"larger than {MAX_CREDENTIAL_FILE_BYTES} bytes")
        try:
            raw = read_limited(Path(self.path), MAX_CREDENTIAL_FILE_BYTES)  # never blocks on a FIFO
        except OSError as exc:
            raise self._fail(exc.strerror or type(exc).__name__) from None
        except ValueError as exc:
            raise self._fail(str(exc)) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail("not UTF-8 text") from None  # the codec's message would quote a byte of it
        lines = [line.strip() for line in text.strip().splitlines()]
        if len(lines) != 1 or not lines[0]:
            raise self._fail(f"expected exactly one non-empty line, found {len([x for x in lines if x])}")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in lines[0]):
            raise self._fail("contains control characters")
        return lines[0]

    def secrets(self) -> list[str]:
        return [self._state.value] if self._state.value else []


class Credentials:
    """Where the Authorization header comes from: a bearer token file, a basic-auth file or URL userinfo."""

    def __init__(
        self,
        *,
        bearer_token_file: str | os.PathLike[str] | None = None,
        basic_auth_file: str | os.PathLike[str] | None = None,
        url_userinfo: tuple[str, str] | None = None,
    ) -> None:
        given = [x is not None for x in (bearer_token_file, basic_auth_file, url_userinfo)]
        if sum(given) > 1:
            raise ValueError(
                "choose one Prometheus authentication: a bearer token file, a basic-auth file "
                "or user:password in the URL"
            )
        self.bearer = None if bearer_token_file is None else CredentialFile(bearer_token_file, "bearer token")
        self.basic = None if basic_auth_file is None else CredentialFile(basic_auth_file, "basic-auth")
        self._userinfo = url_userinfo
        self._last_header = ""

    def header(self) -> str | None:
        header = self._header()
        if header is not None:
            self._last_header = header.split(" ", 1)[1]
        return header

    def _header(self) -> str | None:
        if self.bearer is not None:
            return f"Bearer {self.bearer.read()}"
        if self.basic is not None:
            user, colon, password = self.basic.read().partition(":")
            if not colon or not user:
                raise CredentialError(f"cannot use the basic-auth file {self.basic.path}: expected user:password")
            return _basic(user, password)
        if self._userinfo is not None:
            return _basic(*self._userinfo)
        return None

    def secrets(self) -> list[str]:
        """Every credential value last used (raw, password part, and as sent): for redaction."""
        found = [self._last_header]
        for source in (self.bearer, self.basic):
            if source is not None:
                found += [value for line in source.secrets() for value in (line, line.partition(":")[2])]
        if self._userinfo is not None:
            found.append(self._userinfo[1])
        return [s for s in found if s]


def _basic(user: str, password: str) -> str:
    return "Basic " + b64encode(f"{user}:{password}".encode()).decode("ascii")
