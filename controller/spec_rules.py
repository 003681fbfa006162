"""Pure field rules of the rollout spec: durations, numbers, names, hosts and header matches.

Each rule returns a reason (or raises ValueError for pydantic) that names the real problem, so the
loader can print it at the right line. The header rules follow what Envoy and Istio accept and route
on: Envoy evaluates `regex` header matches with RE2 as a full match, and refuses RE2 programs larger
than 100 by default.
"""

from __future__ import annotations

import collections.abc
import math
import random
import re
from collections.abc import Callable
from typing import TypeVar

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

# --- bounds (documented in the field descriptions and the README) -----------------------------------

MAX_VERSIONS = 10
MAX_STEPS = 50
MAX_GATES = 20
MIN_INTERVAL = 0.1  # sub-second ticks are for tests against local Prometheus
MAX_INTERVAL = 600.0
MIN_WINDOW = 5.0  # Prometheus needs at least two scrapes inside a rate() window
MAX_WINDOW = 3600.0
MAX_STEP_DURATION = 86400.0
MAX_MISSING_DATA_TIMEOUT = 86400.0
MIN_PROGRESS_DEADLINE = 1.0  # short deadlines are for tests
MAX_PROGRESS_DEADLINE = 86400.0
DEFAULT_PROGRESS_DEADLINE = 600.0
MAX_HEADER_VALUE = 256
MAX_REGEX_PROGRAM = 100  # Envoy's default re2.max_program_size error level

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def format_seconds(seconds: float) -> str:
    """A readable duration for messages: 0.1 -> '100ms', 600 -> '10m', 86400 -> '24h', 3.6e26 -> '3.6e+26s'."""
    if not math.isfinite(seconds) or seconds >= 10**7:
        return f"{seconds:.3g}s"
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_duration(value: object, minimum: float = 0.0, maximum: float = math.inf) -> float:
    """'90s', '1m30s', '2h', '500ms' or a number of seconds -> seconds, within [minimum, maximum]."""
    if isinstance(value, bool):
        raise ValueError("duration must be a string like '30s' or a number of seconds")
    if isinstance(value, int):
        if value > maximum:  # compared as an integer: 10**400 must not overflow first
            shown = f"{value}s" if value < 10**15 else f"~10^{int(value.bit_length() * 0.30103)}s"
            raise ValueError(f"duration {shown} is above the limit of {format_seconds(maximum)}")
        seconds = float(value)
    elif isinstance(value, float):
        if math.isnan(value):
            raise ValueError("duration is not a number (.nan): give seconds or a form like '30s'")
        if math.isinf(value):
            raise ValueError("duration is not finite: give seconds or a form like '30s'")
        seconds = value
    elif isinstance(value, str):
        text = value.strip()
        parts = _DURATION_PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"invalid duration {_shown(value)}: use forms like '30s', '2m', '1h30m', '500ms'")
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
        if not math.isfinite(seconds):  # hundreds of digits: float() gives inf
            raise ValueError(f"duration {_shown(value)} is above the limit of {format_seconds(maximum)}")
    else:
        raise ValueError("duration must be a string like '30s' or a number of seconds")
    if seconds < 0:
        raise ValueError("duration must be >= 0")
    if seconds > maximum:
        raise ValueError(f"duration {format_seconds(seconds)} is above the limit of {format_seconds(maximum)}")
    if seconds < minimum:
        raise ValueError(f"duration {format_seconds(seconds)} is below the minimum of {format_seconds(minimum)}")
    return seconds


def duration_between(minimum: float, maximum: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        return parse_duration(value, minimum, maximum)

    return check


def finite_number(value: object) -> object:
    """Before pydantic's own number checks: no booleans, and NaN / infinity named as such."""
    # YAML turns `true`/`yes` into booleans, which pydantic's lax mode would read as 1.
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return value  # pydantic says it is not a valid number
    if isinstance(number, float):
        if math.isnan(number):
            raise ValueError("not a number (NaN): give a finite number")
        if math.isinf(number):
            raise ValueError("not finite (infinity): give a finite number")
    return value


Sized = TypeVar("Sized", bound=collections.abc.Sized)


def count_between(noun: str, minimum: int, maximum: int, why_minimum: str = "") -> Callable[[Sized], Sized]:
    def check(items: Sized) -> Sized:
        if len(items) < minimum:
            raise ValueError((f"no {noun}" if minimum == 1 else f"at least {minimum} {noun} needed") + why_minimum)
        if len(items) > maximum:
            raise ValueError(f"at most {maximum} {noun} allowed, got {len(items)}")
        return items

    return check


# --- names and hosts -------------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_LABEL_PATTERN = "^" + _DNS_LABEL.pattern + "$"
DNS_LABEL_RULE = "lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"


def validate_version_name(name: object) -> str | None:
    """None when `name` is a valid version (subset) name, else the reason. The spec uses the same rule."""
    if not isinstance(name, str):
        return "a version name must be a string"
    if len(name) > 63 or not _DNS_LABEL.fullmatch(name):
        return f"version name {_shown(name)} is not a DNS label: {DNS_LABEL_RULE}"
    return None


def validate_host(host: object) -> str | None:
    """None for an RFC 1123 DNS subdomain (lowercase, <= 253 characters, labels <= 63), else the reason."""
    if not isinstance(host, str):
        return "host must be a string"
    if "*" in host:
        return f"host {_shown(host)} has a wildcard: Ramp routes one service's host, give its full DNS name"
    if not host or len(host) > 253:
        return f"host must have 1 to 253 characters, got {len(host)}"
    for label in host.split("."):
        if len(label) > 63 or not _DNS_LABEL.fullmatch(label):
            return (
                f"host {_shown(host)} is not a DNS name: dot-separated labels of {DNS_LABEL_RULE} (RFC 1123, lowercase)"
            )
    return None


MAX_GATEWAYS = 10
MAX_EXTRA_HOSTS = 20
MESH_GATEWAY = "mesh"


def validate_gateway(gateway: object) -> str | None:
    """None for Istio's reserved `mesh` or a `[namespace/]name` Gateway reference, else the reason.

    The namespace is a DNS label and the name a DNS subdomain, as Kubernetes names them; no wildcard.
    """
    if not isinstance(gateway, str):
        return "gateway must be a string"
    if gateway == MESH_GATEWAY:
        return None
    if "*" in gateway:
        return f"gateway {_shown(gateway)} has a wildcard: name one Gateway as [namespace/]name, or mesh"
    namespace, slash, name = gateway.rpartition("/")
    if slash and (len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace)):
        return f"gateway {_shown(gateway)}: namespace {_shown(namespace)} is not a DNS label: {DNS_LABEL_RULE}"
    if slash and name == MESH_GATEWAY:
        return f"gateway {_shown(gateway)}: mesh is reserved for the sidecars and takes no namespace: write mesh"
    labels_ok = all(len(label) <= 63 and _DNS_LABEL.fullmatch(label) for label in name.split("."))
    if not name or len(name) > 253 or not labels_ok:
        return (
            f"gateway {_shown(gateway)} is not [namespace/]name with a DNS name (dot-separated labels of "
            f"{DNS_LABEL_RULE}), nor the reserved mesh"
        )
    return None


def _check(rule: Callable[[object], str | None]) -> Callable[[str], str]:
    def check(value: str) -> str:
        reason = rule(value)
        if reason is not None:
            raise ValueError(reason)
        return value

    return check


check_version_name = _check(validate_version_name)
check_host = _check(validate_host)
check_gateway = _check(validate_gateway)


# --- header matches --------------------------------------------------------------------------------

_HEADER_NAME = re.compile(r"[a-z0-9]([-a-z0-9_]*[a-z0-9])?")
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "trailer"}
)
_SET_BY_ENVOY = frozenset({"x-request-id", "x-forwarded-proto"})
# Headers (nearly) every request carries: a value that matches any non-empty value selects everyone.
_CARRIED_BY_ALL = frozenset(
    {"user-agent", "accept", "accept-encoding", "accept-language", "x-forwarded-for", "traceparent", "x-b3-traceid"}
)


def header_name_problem(name: object) -> str | None:
    """None when Ramp may route on header `name`, else the reason."""
    if not isinstance(name, str):
        return "header name must be a string"
    if not name:
        return "header name is empty"
    if not name.isprintable() or not name.isascii():
        return f"header name {_shown(name)} has control or non-ASCII characters"
    if name.startswith(":"):
        return (
            f"{name} is an HTTP/2 pseudo-header, not a header a VirtualService header match routes on "
            "(the host is the spec's host)"
        )
    if name.lower() == "host":
        return "every request carries host and the VirtualService already selects it: use the spec's host field"
    if name.lower() in _HOP_BY_HOP:
        return (
            f"{name} is a hop-by-hop header (RFC 9110 7.6.1): proxies drop it and HTTP/2 forbids it, "
            "so it cannot select testers"
        )
    if name.lower() == "content-length":
        return "content-length describes the body (HTTP/2 and chunked requests may omit it), not who sent it"
    if name.lower() in _SET_BY_ENVOY or name.lower().startswith("x-envoy-"):
        return f"Envoy sets or overwrites {name} on every request: it cannot select testers"
    if name != name.lower():
        return f"header name {name!r} must be lowercase (Istio matches lowercased names): use {name.lower()!r}"
    if len(name) > 128 or not _HEADER_NAME.fullmatch(name):
        return (
            f"header name {name!r} is not a valid header token for Istio: a-z, 0-9, '-' and '_', "
            "starting and ending with a letter or digit, at most 128 characters"
        )
    return None


def header_value_problem(value: object) -> str | None:
    """Checks that do not depend on the match kind: bytes a request can carry."""
    if not isinstance(value, str):
        return "header value must be a string"
    if not value:
        return "header value is empty: an empty exact value selects nobody, an empty prefix or regex everybody"
    if len(value) > MAX_HEADER_VALUE:
        return f"header value longer than {MAX_HEADER_VALUE} characters"
    bad = next((c for c in value if not (" " <= c <= "~")), None)
    if bad is not None:
        kind = "a control character" if not bad.isprintable() else "a non-ASCII character"
        return f"header value has {kind} ({bad!r}): Envoy refuses or cannot match it; use printable ASCII"
    if value != value.strip(" "):
        return "header value starts or ends with a space: HTTP strips it, so no request would match"
    return None


check_header_name = _check(header_name_problem)
check_header_value = _check(header_value_problem)

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_rng = random.Random(20261126)
_SAMPLES = [  # arbitrary header values; a match accepting all of them is taken to accept every value
    "a",
    "0",
    "v2",
    "x",
    "-",
    "Z9",
    "*/*",
    "gzip, deflate, br",
    "Mozilla/5.0 (X11; Linux x86_64)",
    "!#$%&'*+-.^_`|~",
    "zz top",
    "true",
    "1.2.3.4",
    "en-US,en;q=0.9",
    "00-4bf92f3577b34da6-00f067aa0ba902b7-01",
] + ["".join(_rng.choice([chr(c) for c in range(32, 127)]) for _ in range(n)) for n in (1, 2, 3, 7, 16, 64, 255)]


def _matches_every_value(matches: Callable[[str], bool], include_empty: bool) -> bool:
    return (matches("") or not include_empty) and all(matches(sample) for sample in _SAMPLES)


def header_match_problem(name: str, value: str, match: str) -> str | None:
    """Match-kind checks: the regex is RE2 that Envoy accepts, and the match does not select every request."""
    common = name in _CARRIED_BY_ALL
    if match == "regex":
        try:
            compiled = re2.compile(value, _RE2_OPTIONS)
        except re2.error as exc:
            detail = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else exc
            return (
                f"not a valid RE2 regex ({detail}): Envoy matches headers with RE2, which has no backreferences "
                "or lookaround"
            )
        if compiled.programsize > MAX_REGEX_PROGRAM:
            return (
                f"regex too complex for Envoy: RE2 program size {compiled.programsize} > {MAX_REGEX_PROGRAM} "
                "(Envoy's default limit)"
            )
        if _matches_every_value(lambda s: compiled.fullmatch(s) is not None, include_empty=True):
            return f"regex {value!r} matches every value: every request carrying {name} would reach the target"
        if common and _matches_every_value(lambda s: compiled.fullmatch(s) is not None, include_empty=False):
            return (
                f"regex {value!r} matches any non-empty {name}, which nearly every request carries: "
                "this is not a header-only test"
            )
    return None
