"""Every HTTPRoute Ramp renders or merges is one the apiserver stores: the packaged Gateway API CRD (v1.6.1),
checked strictly (`RouteSchemas`: unknown fields are errors) AND as the apiserver does (defaults, schema,
CEL rules `x-kubernetes-validations`), with the emulator's validator `tests/k8s/crd_validation.py`
(jsonschema + cel-python).

CEL coverage. The CRD's v1 schema has 89 rules at 26 places; `test_every_cel_rule_of_the_crd_is_evaluated`
proves that every one of them is evaluated on the objects below (none skipped), and every one evaluates
with cel-python: no rule answers "rule evaluation error". One needs help, and is helped rather than skipped:

* the two `spec.parentRefs` rules ("sectionName must be specified / unique when parentRefs includes 2 or
  more references to the same parent") read `p.__namespace__`. Kubernetes escapes property names that are
  CEL reserved words (`namespace` -> `__namespace__`) when it binds an object to CEL; the emulator's
  `to_cel` binds the plain JSON names, so for it `has(p.__namespace__)` is always false and two refs to
  same-named Gateways in DIFFERENT namespaces read as the same parent (refused, although the apiserver
  accepts them). `ApiServer` below applies Kubernetes' escaping to the schema and the object before handing
  them to the emulator, and only when the emulator itself does not (checked once, by behaviour), so the
  rules run as the apiserver runs them. `namespace` is the only property of this CRD that needs escaping.

Not emulated (as documented in crd_validation.py): CEL cost budgets and ratcheting; formats are checked by
the strict validator instead.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.engine.routing_model import DesiredRouting
from controller.routing.crd_schema import (
    CRD_ENV_VAR,
    GATEWAY_API_CRD_FILE,
    PACKAGED_CRD_FILE,
    IstioSchemas,
    RouteSchemas,
)
from controller.routing.httproute_merge import merge_http_route
from controller.routing.httproute_render import http_route
from controller.routing.istio_render import virtual_service
from controller.routing.state_codec import STATE_ANNOTATION
from tests.k8s.crd_validation import CrdVersion, cel_rules, defaulted
from tests.unit.test_httproute_merge import FOREIGN_RULES, foreign_routes
from tests.unit.test_httproute_render import PROPERTY, reviews, routings

# Kubernetes' CEL escaping of property names (apiextensions-apiserver, cel: "Escaping").
CEL_RESERVED = frozenset({
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if", "import",
    "let", "loop", "package", "namespace", "return", "var", "void", "while",
})  # fmt: skip
_ESCAPES = (("__", "__underscores__"), (".", "__dot__"), ("-", "__dash__"), ("/", "__slash__"))


def cel_escaped(name: str) -> str:
    if name in CEL_RESERVED:
        return f"__{name}__"
    for plain, escaped in _ESCAPES:
        name = name.replace(plain, escaped)
    return name


def escaped_schema(schema: Any) -> Any:
    """The schema with every property name as CEL sees it (and `required`, list-map keys to match)."""
    if isinstance(schema, list):
        return [escaped_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            result[key] = {cel_escaped(name): escaped_schema(sub) for name, sub in value.items()}
        elif key in ("required", "x-kubernetes-list-map-keys") and isinstance(value, list):
            result[key] = [cel_escaped(name) for name in value]
        else:
            result[key] = escaped_schema(value)
    return result


def escaped_value(schema: Mapping[str, Any], value: Any) -> Any:
    """The object with its properties renamed like `escaped_schema` (map keys, e.g. labels, untouched)."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        return {
            (cel_escaped(k) if k in props else k): escaped_value(props.get(k) or (extra if isinstance(extra, dict)
                                                                                   else {}), v)
            for k, v in value.items()
        }  # fmt: skip
    if isinstance(value, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [escaped_value(items, v) for v in value]
    return value


def _crd() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load(GATEWAY_API_CRD_FILE.read_text(encoding="utf-8"))
    return found


def _v1(crd: Mapping[str, Any]) -> Mapping[str, Any]:
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")


SAME_NAME_TWO_NAMESPACES = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "shop"},
    "spec": {"parentRefs": [{"name": "public", "namespace": "a"}, {"name": "public", "namespace": "b"}],
             "rules": [{"backendRefs": [{"name": "s", "port": 80}]}]},
}  # fmt: skip


class ApiServer:
    """What a kube-apiserver with the packaged HTTPRoute CRD answers to a create or an update."""

    def __init__(self) -> None:
        crd = _crd()
        plain = CrdVersion(crd, _v1(crd))
        probe = copy.deepcopy(SAME_NAME_TWO_NAMESPACES)
        plain.admit(probe)
        self.escapes = bool(plain.validate(probe))  # the emulator misreads p.__namespace__: escape for it
        if self.escapes:
            crd = copy.deepcopy(crd)
            version = _v1(crd)
            version["schema"]["openAPIV3Schema"] = escaped_schema(version["schema"]["openAPIV3Schema"])
        self.plain_schema = _v1(_crd())["schema"]["openAPIV3Schema"]
        self.version = CrdVersion(crd, _v1(crd))

    def problems(self, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[str]:
        """Strict schema problems, fields the apiserver would prune, then its 422 causes (schema + CEL)."""
        strict = RouteSchemas.load().validate(obj)
        body, before = copy.deepcopy(dict(obj)), copy.deepcopy(dict(old)) if old is not None else None
        if self.escapes:
            body = escaped_value(self.plain_schema, body)
            before = escaped_value(self.plain_schema, before) if before is not None else None
        pruned = [f"pruned: {path}" for path in self.version.admit(body)]
        if before is not None:
            self.version.admit(before)
        causes = [f"{c.field}: {c.message}".replace("__namespace__", "namespace")
                  for c in self.version.validate(body, before)]  # fmt: skip
        return [*strict, *pruned, *causes]


@cache
def apiserver() -> ApiServer:
    return ApiServer()


# cel-python interprets every rule on every value (0.05 s for a Ramp-only route, 0.2-0.8 s with foreign filters):
# fewer examples than the pure tests, still each a different routing over a different foreign route.
CEL_PROPERTY = settings(PROPERTY, max_examples=80)

# --- the objects -------------------------------------------------------------------------------------------

CONDITION = {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "observedGeneration": 2,
             "lastTransitionTime": "2025-01-01T00:00:00Z"}  # fmt: skip
MIRROR = {"group": "", "kind": "Service", "name": "shadow", "port": 80}
EXTENSION = {"group": "example.net", "kind": "Plugin", "name": "auth"}


def every_filter(rewrite: dict[str, Any], cors: dict[str, Any], mirror: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-via", "value": "gw"}],
                                                                    "remove": ["x-internal"]}},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-served", "value": "1"}]}},
        {"type": "RequestMirror", "requestMirror": {"backendRef": MIRROR, **mirror}},
        {"type": "URLRewrite", "urlRewrite": {"hostname": "internal.example.com", "path": rewrite}},
        {"type": "CORS", "cors": cors},
        {"type": "ExtensionRef", "extensionRef": EXTENSION},
    ]  # fmt: skip


def kitchen_sink() -> dict[str, Any]:
    """A foreign HTTPRoute using every part of the schema that carries a CEL rule: filters of every type on
    rules and on backendRefs, redirects and rewrites of both path kinds, CORS lists, mirrors by percent and by
    fraction, timeouts, path matches, refs to one Gateway through two listeners and to a same-named Gateway in
    another namespace, and a status."""
    parents = [{"name": "internal", "namespace": "infra", "sectionName": "http"},
               {"name": "internal", "namespace": "infra", "sectionName": "https"},
               {"name": "public", "namespace": "other"}]  # fmt: skip
    edge_rule = {
        "name": "edge",
        "matches": [{"path": {"type": "PathPrefix", "value": "/edge"}, "method": "GET",
                     "headers": [{"type": "RegularExpression", "name": "x-tier", "value": "^gold|silver$"}],
                     "queryParams": [{"type": "Exact", "name": "debug", "value": "1"}]}],
        "filters": every_filter({"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"},
                                {"allowOrigins": ["https://a.example.com"], "allowMethods": ["GET", "POST"],
                                 "allowHeaders": ["x-a"], "allowCredentials": True, "maxAge": 600},
                                {"fraction": {"numerator": 1, "denominator": 10}}),
        "backendRefs": [
            {"group": "", "kind": "Service", "name": "edge-a", "port": 80, "weight": 3,
             "filters": every_filter({"type": "ReplaceFullPath", "replaceFullPath": "/x"},
                                     {"allowOrigins": ["*"], "allowMethods": ["*"], "allowHeaders": ["*"]},
                                     {"percent": 10})},
            {"name": "edge-b", "port": 80, "weight": 1,
             "filters": [{"type": "RequestRedirect", "requestRedirect": {
                 "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/y"}}},
                 {"type": "RequestMirror", "requestMirror": {"backendRef": MIRROR,
                                                             "fraction": {"numerator": 1, "denominator": 2}}}]},
        ],
        "timeouts": {"request": "10s", "backendRequest": "2s"},
    }  # fmt: skip
    moved = {"name": "moved", "matches": [{"path": {"type": "Exact", "value": "/old"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {
                 "scheme": "https", "statusCode": 301,
                 "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}]}  # fmt: skip
    legacy = {"name": "legacy", "matches": [{"path": {"type": "PathPrefix", "value": "/legacy"}}],
              "filters": [{"type": "RequestRedirect", "requestRedirect": {
                  "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/modern"}}}]}  # fmt: skip
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "reviews", "namespace": "shop", "generation": 2, "resourceVersion": "9",
                     "labels": {"team": "edge"}, "annotations": {"owner": "edge"}},
        "spec": {"parentRefs": parents, "hostnames": ["legacy.example.com"], "rules": [edge_rule, moved, legacy]},
        "status": {"parents": [{"parentRef": p, "controllerName": "example.net/gw", "conditions": [CONDITION]}
                               for p in parents]},
    }  # fmt: skip


def test_the_helpers_are_sound() -> None:
    """The escaping is Kubernetes': only `namespace` changes here, and the apiserver accepts same-named
    Gateways in two namespaces but refuses the same Gateway twice."""
    assert [cel_escaped(n) for n in ("namespace", "a-b.c/d", "x__y", "name")] == [
        "__namespace__", "a__dash__b__dot__c__slash__d", "x__underscores__y", "name"
    ]  # fmt: skip
    assert apiserver().problems(SAME_NAME_TWO_NAMESPACES) == []
    twice = copy.deepcopy(SAME_NAME_TWO_NAMESPACES)
    twice["spec"]["parentRefs"][1]["namespace"] = "a"
    assert apiserver().problems(twice) == [
        'spec.parentRefs: Invalid value: "array": sectionName must be unique when parentRefs includes 2 or more '
        "references to the same parent"
    ]
    assert apiserver().problems(kitchen_sink()) == []


# --- Ramp's objects are stored ----------------------------------------------------------------------------


@settings(CEL_PROPERTY, max_examples=120)
@given(routing=routings())
def test_every_rendered_route_is_valid(routing: DesiredRouting) -> None:
    route = http_route(routing)
    assert apiserver().problems(route) == [], route


def test_the_foreign_routes_merged_over_are_valid() -> None:
    every = merge_http_route(None, reviews(header_routes=()), {}, {})
    every["spec"]["rules"] = [*FOREIGN_RULES, every["spec"]["rules"][-1]]
    assert apiserver().problems(every) == []


@CEL_PROPERTY
@given(data=st.data(), routing=routings())
def test_every_merge_over_a_foreign_route_is_valid(data: st.DataObject, routing: DesiredRouting) -> None:
    current = data.draw(foreign_routes(routing))
    merged = merge_http_route(current, routing, {STATE_ANNOTATION: '{"phase":"progressing"}'}, {})
    assert apiserver().problems(merged, old=current) == [], merged


@settings(CEL_PROPERTY, max_examples=12)  # 0.8 s each: cel-python interprets ~370 rule evaluations per object
@given(routing=routings())
def test_every_merge_over_the_kitchen_sink_is_valid(routing: DesiredRouting) -> None:
    current = kitchen_sink()
    merged = merge_http_route(current, routing, {}, {})
    assert merged["spec"]["rules"][len(routing.header_routes) : -1] == current["spec"]["rules"]
    assert apiserver().problems(merged, old=current) == [], merged


# --- the CEL rules are all live ----------------------------------------------------------------------------


def rule_places(schema: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Where the schema carries CEL rules."""
    if schema.get("x-kubernetes-validations"):
        yield path
    for name, sub in (schema.get("properties") or {}).items():
        yield from rule_places(sub, (*path, name))
    if isinstance(schema.get("items"), Mapping):
        yield from rule_places(schema["items"], (*path, "[]"))


def places_present(schema: Mapping[str, Any], value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The places with rules that `value` has a value at: the rules the apiserver evaluates on it."""
    if value is None:
        return
    if schema.get("x-kubernetes-validations"):
        yield path
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            yield from places_present(sub, value.get(name), (*path, name))
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            yield from places_present(schema["items"], item, (*path, "[]"))


def test_every_cel_rule_of_the_crd_is_evaluated() -> None:
    """89 rules at 26 places; the objects above reach every place, all rules evaluate (a rule cel-python could
    not evaluate answers "rule evaluation error", a problem) and pass."""
    schema = _v1(_crd())["schema"]["openAPIV3Schema"]
    assert len(list(cel_rules(schema))) == 89
    places = set(rule_places(schema))
    assert len(places) == 26
    merged = merge_http_route(kitchen_sink(), reviews(), {}, {})
    assert set(places_present(schema, defaulted(schema, merged))) == places
    assert apiserver().problems(merged) == []


# --- and they refuse what the apiserver refuses -------------------------------------------------------------


def ramp_route() -> dict[str, Any]:
    return http_route(reviews())


def edited(edit: Any) -> dict[str, Any]:
    obj = ramp_route()
    edit(obj)
    return obj


def _rule(**fields: Any) -> dict[str, Any]:
    return {"name": "extra", "matches": [{"path": {"type": "PathPrefix", "value": "/extra"}}],
            "backendRefs": [{"name": "extra", "port": 80}], **fields}  # fmt: skip


CEL_REFUSALS = [
    ("a Service backendRef without port", lambda o: o["spec"]["rules"][1]["backendRefs"][0].pop("port"),
     "spec.spec.rules[1].backendRefs[0]: Invalid value: \"object\": Must have port for Service reference"),
    ("the same Gateway twice", lambda o: o["spec"]["parentRefs"].append({"name": "public", "namespace": "shop"}),
     "sectionName must be unique when parentRefs includes 2 or more references to the same parent"),
    ("a whole Gateway and one of its listeners",
     lambda o: o["spec"]["parentRefs"].append({"name": "public", "namespace": "shop", "sectionName": "https"}),
     "sectionName must be specified when parentRefs includes 2 or more references to the same parent"),
    ("more than 128 matches", lambda o: o["spec"]["rules"].extend(
        [_rule(name=f"r{i}", matches=[{"path": {"type": "PathPrefix", "value": f"/{i}/{j}"}} for j in range(64)])
         for i in range(2)]), "the total number of matches across all rules in a route must be less than 128"),
    ("a repeated filter", lambda o: o["spec"]["rules"][1].update(filters=every_filter(
        {"type": "ReplaceFullPath", "replaceFullPath": "/x"}, {}, {"percent": 1})[:1] * 2),
     "RequestHeaderModifier filter cannot be repeated"),
    ("a redirect with backendRefs", lambda o: o["spec"]["rules"][1].update(filters=[
        {"type": "RequestRedirect", "requestRedirect": {"statusCode": 302}}]),
     "RequestRedirect filter must not be used together with backendRefs"),
    ("a filter body of another type", lambda o: o["spec"]["rules"][1].update(filters=[
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["x-a"]},
         "responseHeaderModifier": {"remove": ["x-b"]}}]),
     "filter.responseHeaderModifier must be nil if the filter.type is not ResponseHeaderModifier"),
    ("a path with //", lambda o: o["spec"]["rules"].insert(1, _rule(
        matches=[{"path": {"type": "PathPrefix", "value": "/a//b"}}])), "must not contain '//'"),
    ("a backend timeout above the request's", lambda o: o["spec"]["rules"][1].update(
        timeouts={"request": "1s", "backendRequest": "1m"}), "backendRequest timeout cannot be longer than request"),
    ("a mirror fraction above 1", lambda o: o["spec"]["rules"][1].update(filters=[
        {"type": "RequestMirror", "requestMirror": {"backendRef": MIRROR,
                                                    "fraction": {"numerator": 3, "denominator": 2}}}]),
     "numerator must be less than or equal to denominator"),
    ("a rewrite of the prefix with two matches", lambda o: o["spec"]["rules"].insert(1, _rule(
        matches=[{"path": {"type": "PathPrefix", "value": "/a"}}, {"path": {"type": "PathPrefix", "value": "/b"}}],
        filters=[{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch",
                                                                "replacePrefixMatch": "/c"}}}])),
     "When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"),
    ("CORS '*' with an origin", lambda o: o["spec"]["rules"][1].update(filters=[
        {"type": "CORS", "cors": {"allowOrigins": ["*", "https://a.example.com"]}}]),
     "AllowOrigins cannot contain '*' alongside other origins"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "edit", "message"), CEL_REFUSALS, ids=[c[0] for c in CEL_REFUSALS])
def test_cel_refuses_what_only_cel_can_see(case: str, edit: Any, message: str) -> None:
    """Schema-valid (the strict validator has nothing to say), refused by a CEL rule."""
    obj = edited(edit)
    problems = apiserver().problems(obj)
    assert RouteSchemas.load().validate(obj) == [], case
    assert len(problems) == 1 and message.split(": ", 1)[-1] in problems[0], (case, problems)


SCHEMA_REFUSALS = [
    ("17 rules", lambda o: o["spec"]["rules"].extend(_rule(name=f"r{i}") for i in range(15)),
     "$.spec.rules: [{", "spec.rules: Too many: 17: must have at most 16 items"),
    ("a weight as a string", lambda o: o["spec"]["rules"][1]["backendRefs"][0].update(weight="90"),
     "$.spec.rules[1].backendRefs[0].weight: '90' is not of type 'integer'", "must be of type integer"),
    ("a Prefix header match", lambda o: o["spec"]["rules"][0]["matches"][0]["headers"][0].update(type="Prefix"),
     "$.spec.rules[0].matches[0].headers[0].type: 'Prefix' is not one of", "Unsupported value: \"Prefix\""),
    ("a weight above 1000000", lambda o: o["spec"]["rules"][1]["backendRefs"][0].update(weight=1_000_001),
     "weight: 1000001 is greater than the maximum of 1000000", "should be less than or equal to 1000000"),
    ("an upper-case rule name", lambda o: o["spec"]["rules"][1].update(name="Ramp-Primary"),
     "$.spec.rules[1].name: 'Ramp-Primary' does not match", "spec.rules[1].name: Invalid value: \"Ramp-Primary\""),
]  # fmt: skip


@pytest.mark.parametrize(("case", "edit", "strict", "apiserver_says"), SCHEMA_REFUSALS,
                         ids=[c[0] for c in SCHEMA_REFUSALS])  # fmt: skip
def test_the_schema_refuses_what_gateway_api_refuses(case: str, edit: Any, strict: str, apiserver_says: str) -> None:
    obj = edited(edit)
    found = RouteSchemas.load().validate(obj)
    assert len(found) == 1 and strict in found[0], (case, found)
    assert any(apiserver_says in p for p in apiserver().problems(obj)), (case, apiserver().problems(obj))


def test_unknown_fields_are_refused_strictly() -> None:
    """The apiserver would prune a typo silently; the strict validator says so."""
    obj = edited(lambda o: o["spec"]["rules"][1]["backendRefs"][0].update(wieght=90))
    expected = "$.spec.rules[1].backendRefs[0].wieght: unknown field 'wieght' (Kubernetes would silently prune it)"
    assert RouteSchemas.load().validate(obj) == [expected]
    assert "pruned: spec.rules[1].backendRefs[0].wieght" in apiserver().problems(obj)


# --- loading the schemas ------------------------------------------------------------------------------------


def test_route_schemas_hold_both_routers_kinds_and_istio_schemas_only_istios() -> None:
    schemas = RouteSchemas.load()
    assert {"HTTPRoute", "VirtualService", "DestinationRule"} <= set(schemas.kinds)
    assert schemas.path == PACKAGED_CRD_FILE and schemas.sources == (PACKAGED_CRD_FILE, GATEWAY_API_CRD_FILE)
    assert "HTTPRoute" not in IstioSchemas.load().kinds
    assert RouteSchemas.load() is schemas  # cached
    assert schemas.validate(virtual_service(reviews(router="istio", backends=None))) == []
    assert schemas.validate({**ramp_route(), "apiVersion": "gateway.networking.k8s.io/v1beta1"}) == []
    assert schemas.validate({**ramp_route(), "apiVersion": "gateway.networking.k8s.io/v2"}) == [
        "$.apiVersion: 'gateway.networking.k8s.io/v2' is not a served version of HTTPRoute "
        "(use gateway.networking.k8s.io/v1, gateway.networking.k8s.io/v1beta1)"
    ]


def test_the_istio_override_still_applies_to_istio_kinds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    istio = tmp_path / "istio.yaml"
    istio.write_text(PACKAGED_CRD_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setenv(CRD_ENV_VAR, str(istio))
    schemas = RouteSchemas.load()
    assert schemas.path == istio.resolve() and schemas.sources == (istio.resolve(), GATEWAY_API_CRD_FILE)
    assert {"HTTPRoute", "VirtualService"} <= set(schemas.kinds)
    monkeypatch.setenv(CRD_ENV_VAR, str(tmp_path / "absent.yaml"))
    with pytest.raises(FileNotFoundError, match=CRD_ENV_VAR):
        RouteSchemas.load()
