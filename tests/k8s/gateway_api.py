"""The Gateway API in the Kubernetes emulator: the packaged HTTPRoute CRD, a fake gateway controller, spec fixtures.

A real cluster that serves `router: gateway-api` rollouts has two things the emulator lacks by default:
- the HTTPRoute CRD (Gateway API v1.6.1, packaged at controller/schemas/): `install_httproute_crd` installs it,
  after which the emulator prunes, defaults and validates every HTTPRoute write with the CRD's schema and CEL
  rules (tests/k8s/crd_validation.py) and serves its status subresource, as an apiserver with the CRD does;
- a Gateway API implementation, which is what makes a stored HTTPRoute serve traffic and says so in
  `status.parents`. `FakeGatewayController` plays one: on `reconcile()` it writes, through the status
  subresource, one entry per parentRef of every HTTPRoute with `Accepted` and `ResolvedRefs` for the route's
  current generation. ResolvedRefs is False (BackendNotFound) while a backendRef names a Service that does not
  exist in the emulator; a parent can be made to refuse the route (Accepted False with a reason); until
  `reconcile()` is called nothing is written, which is how a route that no controller has seen looks.

Ramp's own Services are the application's: `create_version_services` makes the `<service>-<version>` Services
a gateway-api spec weights.
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client

from controller.engine.routing_model import GATEWAY_GROUP, DesiredRouting
from controller.routing.crd_schema import RouteSchemas
from controller.routing.gateway_api import GatewayApiRoutes
from controller.routing.istio import IstioRoutes
from controller.spec import RolloutSpec
from controller.spec_loader import parse_spec_text
from tests.k8s.cli_controller import ticking_step
from tests.k8s.emulator import KubeHarness
from tests.unit.engine_fixtures import NO_APPROVAL_YAML

GW_VERSION, HTTPROUTES = "v1", "httproutes"
REPO = Path(__file__).resolve().parents[2]
HTTPROUTE_CRD_FILE = REPO / "controller" / "schemas" / "gateway-api-httproutes-v1.6.1.yaml"
CONTROLLER_NAME = "gateway.example.com/fake-gateway"
PORT = 8080

# NO_APPROVAL_YAML (prod/shop: header step, 10 %, 50 %) served by an HTTPRoute; the Services are shop-v1, shop-v2.
GATEWAY_API_YAML = NO_APPROVAL_YAML + f"router: gateway-api\ngateway_api: {{port: {PORT}}}\n"


@cache
def _crd_text() -> str:
    return HTTPROUTE_CRD_FILE.read_text()


def httproute_crd() -> dict[str, Any]:
    """The packaged HTTPRoute CustomResourceDefinition (a fresh copy)."""
    crd: dict[str, Any] = yaml.load(_crd_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return crd


def install_httproute_crd(kube: KubeHarness) -> None:
    """Serve and validate gateway.networking.k8s.io HTTPRoutes (schema, defaults, CEL, status subresource)."""
    kube.install_crd(httproute_crd())


def routes_api(kube: KubeHarness) -> client.CustomObjectsApi:
    """A plain client for a foreign writer of HTTPRoutes (a person, another tool)."""
    return client.CustomObjectsApi(kube.api_client())


def create_route(kube: KubeHarness, body: dict[str, Any]) -> dict[str, Any]:
    """Create an HTTPRoute as a person would (`kubectl create`): what the apiserver stored, defaults included."""
    namespace = body["metadata"]["namespace"]
    created = routes_api(kube).create_namespaced_custom_object(
        GATEWAY_GROUP, GW_VERSION, namespace, HTTPROUTES, copy.deepcopy(body)
    )
    return cast(dict[str, Any], created)


def stored_route(kube: KubeHarness, namespace: str, name: str) -> dict[str, Any] | None:
    """The HTTPRoute as the emulator stores it right now (None: there is none)."""
    for obj in kube.objects(GATEWAY_GROUP, GW_VERSION, HTTPROUTES):
        meta = obj.get("metadata", {})
        if meta.get("namespace") == namespace and meta.get("name") == name:
            return copy.deepcopy(obj)
    return None


def route_puts(kube: KubeHarness) -> int:
    """PUTs of HTTPRoutes so far, not counting the status subresource (the gateway controller's writes)."""
    return sum(1 for r in kube.requests("put") if "/httproutes/" in (path := str(r.url.path))
               and not path.endswith("/status"))  # fmt: skip


def assert_valid_route(obj: dict[str, Any] | None) -> None:
    """Valid under the packaged CRD as Ramp checks it (strict: a field the schema lacks is an error, not pruned)."""
    assert obj is not None
    problems = RouteSchemas.load().validate(obj)
    assert problems == [], problems


def create_service(kube: KubeHarness, namespace: str, name: str, port: int = PORT) -> None:
    body: Any = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "http", "port": port}]},
    }
    client.CoreV1Api(kube.api_client()).create_namespaced_service(namespace, body, _preload_content=False)


def create_version_services(kube: KubeHarness, namespace: str, service: str, versions: tuple[str, ...]) -> None:
    """The application's `<service>-<version>` Services (what charts/microservice makes for gateway-api)."""
    for version in versions:
        create_service(kube, namespace, f"{service}-{version}")


def gateway_api_spec(yaml_text: str = GATEWAY_API_YAML) -> RolloutSpec:
    return parse_spec_text(yaml_text, "gateway-api.yaml")


def three_versions_gateway_api(port: int = 9080) -> RolloutSpec:
    """rollout-specs/three-versions.yaml (shop/reviews: header step, traffic steps) with router gateway-api."""
    text = (REPO / "rollout-specs" / "three-versions.yaml").read_text()
    return parse_spec_text(text + f"\nrouter: gateway-api\ngateway_api: {{port: {port}}}\n", "three-versions.yaml")


def team_route() -> dict[str, Any]:
    """What a team had before Ramp: attached to the mesh and to two Gateways named `public` (one per namespace),
    a debug rule with filters and timeouts, Ramp's rule with a filter and a timeout of theirs, a rewrite."""
    return {
        "apiVersion": f"{GATEWAY_GROUP}/{GW_VERSION}",
        "kind": "HTTPRoute",
        "metadata": {
            "name": "reviews",
            "namespace": "shop",
            "labels": {"team": "books"},
            "annotations": {"owner": "team-books", "note": "hand-tuned"},
        },
        "spec": {
            "parentRefs": [
                {"group": "", "kind": "Service", "name": "reviews"},
                {"name": "public", "namespace": "infra", "sectionName": "https"},
                {"name": "public"},  # shop/public: the same name in another namespace is another Gateway
            ],
            "hostnames": ["reviews.example.com"],
            "rules": [
                {
                    "name": "x-debug",
                    "matches": [{"headers": [{"name": "x-debug", "value": "1"}]}],
                    "filters": [
                        {
                            "type": "ResponseHeaderModifier",
                            "responseHeaderModifier": {"add": [{"name": "x-debug-route", "value": "1"}]},
                        }
                    ],
                    "backendRefs": [{"name": "reviews-debug", "port": 9080}],
                    "timeouts": {"request": "10s", "backendRequest": "5s"},
                },
                {
                    "name": "ramp-primary",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "filters": [
                        {
                            "type": "RequestHeaderModifier",
                            "requestHeaderModifier": {"set": [{"name": "x-served-by", "value": "ramp"}]},
                        }
                    ],
                    "backendRefs": [{"name": "reviews-v1", "port": 9080, "weight": 100}],
                    "timeouts": {"request": "30s"},
                },
                {
                    "name": "legacy",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/legacy"}}],
                    "filters": [
                        {
                            "type": "URLRewrite",
                            "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
                        }
                    ],
                    "backendRefs": [{"name": "reviews-legacy", "port": 9080}],
                },
            ],
        },
    }


# --- the fake gateway controller -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """How a parent refuses a route: the condition it sets False (Accepted or ResolvedRefs), reason, message."""

    reason: str
    message: str
    condition: str = "Accepted"


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> dict[str, Any]:
    """A metav1.Condition as Gateway API implementations write them."""
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": _now()}  # fmt: skip


def parent_status(
    parent: dict[str, Any], generation: int, accepted: tuple[bool, str, str] = (True, "Accepted", "accepted"),
    resolved: tuple[bool, str, str] = (True, "ResolvedRefs", "all references resolved"),
    controller: str = CONTROLLER_NAME,
) -> dict[str, Any]:  # fmt: skip
    """One status.parents entry: (ok, reason, message) for Accepted and ResolvedRefs, for `generation`."""
    return {
        "parentRef": copy.deepcopy(parent),
        "controllerName": controller,
        "conditions": [condition("Accepted", *accepted, generation), condition("ResolvedRefs", *resolved, generation)],
    }


class FakeGatewayController:
    """A Gateway API implementation's status writes for HTTPRoutes, on demand (`reconcile`), through the status
    subresource of the real `kubernetes` client. It owns the status entries with its `controller_name` and keeps
    every other controller's entry as found, as implementations sharing a route must."""

    def __init__(self, kube: KubeHarness, controller_name: str = CONTROLLER_NAME) -> None:
        self.routes = client.CustomObjectsApi(kube.api_client())
        self.core = client.CoreV1Api(kube.api_client())
        self.controller_name = controller_name
        self.refusals: dict[str, Refusal] = {}  # by parent name
        self.status_writes = 0

    def refuse(self, parent_name: str, reason: str, message: str = "", condition: str = "Accepted") -> None:
        """From the next reconcile on, parent `parent_name` sets `condition` False with `reason`."""
        self.refusals[parent_name] = Refusal(reason, message or f"refused by {parent_name}", condition)

    def allow(self, parent_name: str) -> None:
        self.refusals.pop(parent_name, None)

    def reconcile(self) -> int:
        """Write the status of every HTTPRoute whose status is not what this controller says now; how many."""
        listed = cast(dict[str, Any], self.routes.list_cluster_custom_object(GATEWAY_GROUP, GW_VERSION, HTTPROUTES))
        written = 0
        services: dict[tuple[str, str], bool] = {}  # (namespace, name) -> exists, read once per reconcile
        for route in listed["items"]:
            resolved = self._resolved(route, services)
            parents = route.get("spec", {}).get("parentRefs") or []
            entries = [self._entry(route, parent, resolved) for parent in parents]
            if not self._differs(route, entries):
                continue
            try:
                self.write_status(route, entries)
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
                continue  # the route changed since the LIST: the next reconcile sees the new generation
            written += 1
        return written

    def write_status(self, route: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
        """Replace this controller's status.parents entries of `route` with `entries` (PUT .../status)."""
        meta = route["metadata"]
        others = [e for e in (route.get("status") or {}).get("parents") or []
                  if e.get("controllerName") != self.controller_name]  # fmt: skip
        body = {**route, "status": {"parents": [*others, *entries]}}
        stored = self.routes.replace_namespaced_custom_object_status(
            GATEWAY_GROUP, GW_VERSION, meta["namespace"], HTTPROUTES, meta["name"], body
        )
        self.status_writes += 1
        return cast(dict[str, Any], stored)

    def _entry(self, route: dict[str, Any], parent: dict[str, Any], resolved: tuple[bool, str, str]) -> dict[str, Any]:
        generation = int(route["metadata"]["generation"])
        accepted = (True, "Accepted", "accepted")
        refusal = self.refusals.get(str(parent.get("name")))
        if refusal is not None and refusal.condition == "Accepted":
            accepted = (False, refusal.reason, refusal.message)
        elif refusal is not None:
            resolved = (False, refusal.reason, refusal.message)
        return parent_status(parent, generation, accepted, resolved, self.controller_name)

    def _resolved(self, route: dict[str, Any], services: dict[tuple[str, str], bool]) -> tuple[bool, str, str]:
        """ResolvedRefs: every backendRef to a core Service names one that exists (in its namespace)."""
        namespace = route["metadata"]["namespace"]
        for rule in route.get("spec", {}).get("rules") or []:
            for backend in rule.get("backendRefs") or []:
                if backend.get("group", "") != "" or backend.get("kind", "Service") != "Service":
                    continue
                key = (backend.get("namespace") or namespace, backend["name"])
                if key not in services:
                    services[key] = self._service_exists(*key)
                if not services[key]:
                    return False, "BackendNotFound", f'Service "{key[0]}/{key[1]}" not found'
        return True, "ResolvedRefs", "all references resolved"

    def _service_exists(self, namespace: str, name: str) -> bool:
        try:
            self.core.read_namespaced_service(name, namespace, _preload_content=False)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            return False
        return True

    def _differs(self, route: dict[str, Any], entries: list[dict[str, Any]]) -> bool:
        def key(found: list[dict[str, Any]]) -> str:
            """What a status entry says, without the transition times."""
            said = [(c["type"], c["status"], c["reason"], c.get("observedGeneration")) for e in found
                    for c in e["conditions"]]  # fmt: skip
            return json.dumps([[e["parentRef"] for e in found], said], sort_keys=True)

        mine = [e for e in (route.get("status") or {}).get("parents") or []
                if e.get("controllerName") == self.controller_name]  # fmt: skip
        return key(mine) != key(entries)


# --- reading what is served, and a controller ticking in the background ------------------------------------


def served(obj: dict[str, Any] | None) -> DesiredRouting | None:
    """What the data plane serves by a stored VirtualService or HTTPRoute, read back as each router reads it."""
    if obj is None:
        return None
    kind = GatewayApiRoutes() if obj["kind"] == "HTTPRoute" else IstioRoutes()
    meta = obj["metadata"]
    return kind.observed(obj, meta["namespace"], meta["name"], None)


def traffic(obj: dict[str, Any] | None) -> tuple[Any, ...]:
    seen = served(obj)
    return () if seen is None else seen.traffic()


def ticking(step: Callable[[], object], max_ticks: int = 200) -> AbstractContextManager[None]:
    """The controller (and the gateway controller) ticking on a background thread for the duration of the block."""
    return ticking_step(step, max_ticks)
