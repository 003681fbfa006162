"""Keep credentials out of everything Ramp writes: state annotations, Events, logs, reprs, error reasons.

`redact_url` hides a URL's userinfo (`http://user:pass@host/` -> `http://***@host/`) and the values of
query parameters that look like credentials (`?token=...`). `redact_text` replaces known secret strings
(and their percent-encoded forms) in free text, e.g. an exception message that echoes a URL, and hides the
userinfo of any URL it contains. Redact before truncating: a cut secret is still a leak.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

MASK = "***"
SECRET_PARAMS = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "auth",
        "authorization",
        "key",
        "pass",
        "passwd",
        "password",
        "secret",
        "sig",
        "signature",
        "token",
        "x-api-key",
    }
)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]*)@")


def _is_secret_param(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_PARAMS or any(w in lowered for w in ("token", "password", "secret", "apikey", "api_key"))


def redact_url(url: str) -> str:
    """The URL with its userinfo replaced by `***` and credential-like query values by `***`."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # unparseable (e.g. a bad IPv6 literal): hide anything that looks like userinfo
        return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{urllib.parse.quote(k, safe='')}={MASK if _is_secret_param(k) else urllib.parse.quote(v, safe='')}"
            for k, v in pairs
        )
    fragment = MASK if parts.fragment and "=" in parts.fragment else parts.fragment
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def url_secrets(url: str) -> list[str]:
    """The secrets a URL carries (userinfo, credential-like query values), raw and decoded."""
    found: list[str] = []
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return found
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        _, _, password = userinfo.partition(":")
        found += [userinfo, password, urllib.parse.unquote(password), urllib.parse.unquote(userinfo)]
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if _is_secret_param(key):
            found += [value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)]
    return [s for s in dict.fromkeys(found) if s]


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret (raw and percent-encoded) and any URL userinfo replaced by `***`."""
    variants: set[str] = set()
    for secret in secrets:
        if secret:  # even a short one: garbled text is better than a leaked secret
            variants.update({secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)})
    for secret in sorted(variants, key=len, reverse=True):  # longest first: a secret containing another
        text = text.replace(secret, MASK)
    return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
