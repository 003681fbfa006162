"""HMAC-SHA256 signatures of outgoing webhook bodies (hooks and notifications), GitHub's scheme:
`X-Ramp-Signature-256: sha256=<hex of HMAC-SHA256(secret, body)>`. A receiver recomputes it over the raw body and
compares in constant time (`verify`)."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Ramp-Signature-256"


def sign(body: bytes, secret: bytes) -> str:
    if not secret:
        raise ValueError("empty HMAC secret")
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: bytes, header: str | None) -> bool:
    return header is not None and bool(secret) and hmac.compare_digest(sign(body, secret), header)
