"""DesiredRouting -> a Gateway API HTTPRoute (a plain dict), for `router: gateway-api`.

Gateway API weights Services, not subsets: every version is served by its own Service
(`DesiredRouting.backends`), and the weighted rule `ramp-primary` has one backendRef per version, in spec
order, weighted by its percentage (0 is allowed and kept, so the rule always names every version).

Header routes become rules of their own, before `ramp-primary`. Gateway API picks the rule whose match
ranks highest (exact path, longest path prefix, method, MOST HEADER MATCHES, most query matches) and only
then the first in list order; a header rule has one header match and `ramp-primary` none, so the header
rule wins by precedence, and by order too when an implementation ranks them equal.

Gateway API has Exact and RegularExpression header matches only. Ramp's kinds map to them so that they mean
the same whether an implementation matches regular expressions fully or partially (both exist):

    exact  -> Exact              value
    prefix -> RegularExpression  ^<value, every non-word character escaped for RE2>.*
    regex  -> RegularExpression  ^(?:<regex>)$        (Ramp's regex is an RE2 full match)

`prefix_regex`/`regex_pattern` and their inverses (`prefix_of`, `regex_of`) are here together so the read
back (`httproute_shape`) can only ever understand exactly what is written.
"""

from __future__ import annotations

import json
import re
from typing import Any

from controller.engine.routing_model import GATEWAY_GROUP, PRIMARY_ROUTE_NAME, DesiredRouting, HeaderRoute, ParentRef

__all__ = [
    "BACKENDS_ANNOTATION", "GATEWAY_GROUP", "HTTPROUTES", "HTTPROUTE_API_VERSION", "HTTPROUTE_VERSION",
    "MANAGED_BY", "backends_annotation", "http_route", "managed_rules", "parent_ref_dict", "prefix_of",
    "prefix_regex", "regex_of", "regex_pattern",
]  # fmt: skip

HTTPROUTE_VERSION = "v1"
HTTPROUTE_API_VERSION = f"{GATEWAY_GROUP}/{HTTPROUTE_VERSION}"
HTTPROUTES = "httproutes"
BACKENDS_ANNOTATION = "ramp.dev/backends"  # {Service name: version}: `ramp status` names versions without the spec
MANAGED_BY = {"app.kubernetes.io/managed-by": "ramp"}
MATCH_ALL_PATH = {"type": "PathPrefix", "value": "/"}  # Gateway API's default match, written out

_WORD = re.compile(r"[A-Za-z0-9_]")
_PREFIX_FORM = re.compile(r"\^((?:[A-Za-z0-9_]|\\[!-/:-@\[-`{-~ ]|\\x\{[0-9A-F]+\})*)\.\*")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~ ])|\\x\{([0-9A-F]+)\}")
_REGEX_FORM = re.compile(r"\^\(\?:(.*)\)\$", re.DOTALL)


# --- header match values ---------------------------------------------------------------------------------


def _escape_char(char: str) -> str:
    if _WORD.fullmatch(char):
        return char
    if " " <= char <= "~":  # printable ASCII punctuation or space: a backslash makes it literal in RE2
        return "\\" + char
    return f"\\x{{{ord(char):X}}}"  # RE2 (and Go regexp) syntax for any code point


def prefix_regex(value: str) -> str:
    """The RE2 pattern matching the header values that start with `value` (anchored, so full or partial
    matching implementations agree)."""
    return "^" + "".join(_escape_char(c) for c in value) + ".*"


def prefix_of(pattern: str) -> str | None:
    """The prefix `prefix_regex` turned into `pattern`, or None when `pattern` is not of that form."""
    found = _PREFIX_FORM.fullmatch(pattern)
    if found is None:
        return None
    return _ESCAPE.sub(lambda m: m.group(1) or chr(int(m.group(2), 16)), found.group(1))


def regex_pattern(regex: str) -> str:
    """Ramp's full-match RE2 `regex` as a pattern that means the same under full and partial matching."""
    return f"^(?:{regex})$"


def regex_of(pattern: str) -> str | None:
    """The regex `regex_pattern` wrapped into `pattern`, or None when `pattern` is not of that form."""
    found = _REGEX_FORM.fullmatch(pattern)
    return None if found is None else found.group(1)


def header_match(route: HeaderRoute) -> dict[str, str]:
    """The HTTPHeaderMatch for a Ramp header route (ValueError for an unknown match kind)."""
    if route.match == "exact":
        return {"type": "Exact", "name": route.header, "value": route.value}
    if route.match == "prefix":
        return {"type": "RegularExpression", "name": route.header, "value": prefix_regex(route.value)}
    if route.match == "regex":
        return {"type": "RegularExpression", "name": route.header, "value": regex_pattern(route.value)}
    raise ValueError(f"unsupported header match {route.match!r} (use exact, prefix or regex)")


# --- rules and the object --------------------------------------------------------------------------------


def _backend(routing: DesiredRouting, version: str, weight: int) -> dict[str, Any]:
    backends = routing.backends
    if backends is None:
        raise ValueError(f"{routing.service}: router gateway-api needs the Service of each version (backends)")
    return {"group": "", "kind": "Service", "name": backends.service_of(version), "port": backends.port,
            "weight": weight}  # fmt: skip


def managed_rules(routing: DesiredRouting) -> list[dict[str, Any]]:
    """The rules Ramp owns, in match order: one per header route, then the weighted `ramp-primary`.

    Gateway API wants rule names unique within a route: a second header route to the same version (no plan
    makes one, the model allows it) is named `ramp-header-<version>-2` (then -3...)."""
    routing.live_weights()  # ValueError unless the weights sum to 100
    rules: list[dict[str, Any]] = []
    names: set[str] = set()
    for route in routing.header_routes:
        if route.version not in routing.versions:
            raise ValueError(f"header route targets unknown version {route.version!r} of {routing.service}")
        name, count = route.route_name, 1
        while name in names:
            count += 1
            name = f"{route.route_name}-{count}"
        names.add(name)
        rules.append(
            {
                "name": name,
                "matches": [{"path": dict(MATCH_ALL_PATH), "headers": [header_match(route)]}],
                "backendRefs": [_backend(routing, route.version, 1)],
            }
        )
    rules.append(
        {
            "name": PRIMARY_ROUTE_NAME,
            "matches": [{"path": dict(MATCH_ALL_PATH)}],
            "backendRefs": [_backend(routing, version, weight) for version, weight in routing.weights],
        }
    )
    return rules


def parent_ref_dict(parent: ParentRef) -> dict[str, Any]:
    """A ParentRef as Gateway API writes it (camelCase; fields that are None left out)."""
    found: dict[str, Any] = {"group": parent.group, "kind": parent.kind, "name": parent.name}
    if parent.namespace is not None:
        found["namespace"] = parent.namespace
    if parent.section_name is not None:
        found["sectionName"] = parent.section_name
    if parent.port is not None:
        found["port"] = parent.port
    return found


def backends_annotation(routing: DesiredRouting) -> str:
    """{Service name: version} as compact JSON, keys sorted (the same routing always gives the same text)."""
    if routing.backends is None:
        raise ValueError(f"{routing.service}: router gateway-api needs the Service of each version (backends)")
    services = {name: version for version, name in routing.backends.services}
    return json.dumps(services, sort_keys=True, separators=(",", ":"))


def http_route(routing: DesiredRouting) -> dict[str, Any]:
    """The complete HTTPRoute Ramp creates for `routing` (ValueError when it has no backends)."""
    spec: dict[str, Any] = {"parentRefs": [parent_ref_dict(p) for p in routing.parent_refs]}
    if routing.extra_hosts:
        spec["hostnames"] = list(routing.extra_hosts)
    spec["rules"] = managed_rules(routing)
    return {
        "apiVersion": HTTPROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": {
            "name": routing.service,
            "namespace": routing.namespace,
            "labels": dict(MANAGED_BY),
            "annotations": {BACKENDS_ANNOTATION: backends_annotation(routing)},
        },
        "spec": spec,
    }
