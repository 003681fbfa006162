"""Which cluster router serves a rollout, and the Gateway API part of a spec.

`router: istio` (the default) writes a VirtualService + DestinationRule; `router: gateway-api` writes an
HTTPRoute whose weights go to one Service per version (`gateway_api.version_service`, default
`{service}-{version}`), attached to `gateway_api.parent_refs` (default: the service itself, for mesh
traffic as Gateway API's GAMMA initiative defines it). Adding a router adds its name to ROUTER_NAMES and one
module registered in controller.cluster_backend.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field

from controller.engine.routing_model import GATEWAY_GROUP, ParentRef, ServiceBackends
from controller.spec_rules import DNS_LABEL_PATTERN, count_between
from controller.spec_types import DnsName, StrictModel

if TYPE_CHECKING:
    from controller.spec import RolloutSpec

RouterName = Literal["istio", "gateway-api"]
ROUTER_NAMES: tuple[str, ...] = ("istio", "gateway-api")
DEFAULT_VERSION_SERVICE = "{service}-{version}"
MAX_PARENT_REFS = 32  # Gateway API's own bound on spec.parentRefs
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_SECTION_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_GROUP = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_KIND = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
Port = Annotated[int, Field(ge=1, le=65535)]


class GatewayParentRef(StrictModel):
    """A Gateway (optionally one listener), or a Service for mesh (GAMMA) traffic."""

    group: Annotated[str, Field(pattern=_GROUP, max_length=253)] = Field(
        default=GATEWAY_GROUP, description="API group; '' (the core group) with kind Service for mesh traffic"
    )
    kind: Annotated[str, Field(pattern=_KIND, max_length=63)] = Field(
        default="Gateway", description="Gateway or Service"
    )
    name: DnsName
    namespace: DnsName | None = Field(default=None, description="Default: the rollout's namespace")
    section_name: Annotated[str, Field(pattern=_SECTION_NAME, max_length=253)] | None = Field(
        default=None, description="A listener of the Gateway (or a port name of the Service)"
    )
    port: Port | None = None

    def to_model(self) -> ParentRef:
        return ParentRef(group=self.group, kind=self.kind, name=self.name, namespace=self.namespace,
                         section_name=self.section_name, port=self.port)  # fmt: skip


ParentRefs = Annotated[
    list[GatewayParentRef],
    AfterValidator(count_between("parent_refs", 1, MAX_PARENT_REFS, ": omit parent_refs for the service itself")),
]


class GatewayApiRouting(StrictModel):
    """How the HTTPRoute of a `router: gateway-api` rollout attaches and which Services it weights."""

    port: Port = Field(description="The port of every version Service (backendRefs need one)")
    parent_refs: ParentRefs | None = Field(
        default=None,
        description=f"Where the HTTPRoute attaches (at most {MAX_PARENT_REFS}); default: the service itself (mesh)",
        json_schema_extra={"minItems": 1, "maxItems": MAX_PARENT_REFS},
    )
    version_service: Annotated[str, Field(min_length=1, max_length=63)] = Field(
        default=DEFAULT_VERSION_SERVICE,
        description="The Service of each version: {service} and {version} are replaced, e.g. {service}-{version}",
    )

    def service_name(self, service: str, version: str) -> str:
        return self.version_service.replace("{service}", service).replace("{version}", version)


def parent_refs_of(spec: RolloutSpec) -> tuple[ParentRef, ...]:
    """The spec's parent refs, or the service itself (GAMMA mesh attachment) when none are listed."""
    config = spec.gateway_api
    if config is None or spec.router != "gateway-api":
        return ()
    if config.parent_refs is None:
        return (ParentRef(group="", kind="Service", name=spec.service),)
    return tuple(ref.to_model() for ref in config.parent_refs)


def backends_of(spec: RolloutSpec) -> ServiceBackends | None:
    config = spec.gateway_api
    if config is None or spec.router != "gateway-api":
        return None
    services = tuple((v.name, config.service_name(spec.service, v.name)) for v in spec.versions)
    return ServiceBackends(port=config.port, services=services)


def router_problems(spec: RolloutSpec) -> list[tuple[tuple[str | int, ...], str]]:
    """The router's cross-field rules, as (field path, reason)."""
    config = spec.gateway_api
    if spec.router == "istio":
        if config is not None:
            return [(("gateway_api",), "only for router: gateway-api (this spec's router is istio)")]
        return []
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if config is None:
        return [(("gateway_api",), "router: gateway-api needs gateway_api (at least its port: the versions' "
                                   "Services port)")]  # fmt: skip
    if spec.gateways is not None:
        problems.append((("gateways",), "Istio gateways do not apply to router: gateway-api; attach the route "
                                        "with gateway_api.parent_refs"))  # fmt: skip
    problems.extend(_version_service_problems(spec, config))
    seen: dict[tuple[str, str, str, str | None, str | None, int | None], int] = {}
    refs = config.parent_refs or []
    for i, ref in enumerate(refs):
        key = (ref.group, ref.kind, ref.name, ref.namespace or spec.namespace, ref.section_name, ref.port)
        earlier = [j for j, other in enumerate(refs[:i]) if _same_parent(other, ref)]
        if key in seen:
            problems.append((("gateway_api", "parent_refs", i), f"listed twice (first at parent_refs[{seen[key]}])"))
        elif earlier and _shared_section(ref, [refs[j] for j in earlier]):
            problems.append((("gateway_api", "parent_refs", i),
                             f"attaches to the parent of parent_refs[{earlier[0]}] again: give each reference to one "
                             "parent its own section_name (Gateway API refuses it otherwise)"))  # fmt: skip
        seen.setdefault(key, i)
        if ref.kind == "Service" and ref.group != "":
            problems.append((("gateway_api", "parent_refs", i, "group"),
                             "a Service parent (mesh traffic) is in the core group: write group: ''"))  # fmt: skip
    return problems


def _shared_section(ref: GatewayParentRef, same_parent: list[GatewayParentRef]) -> bool:
    """Whether `ref` and earlier references to its parent fail to name distinct listeners (section_name)."""
    return ref.section_name is None or any(other.section_name in (None, ref.section_name) for other in same_parent)


def _same_parent(a: GatewayParentRef, b: GatewayParentRef) -> bool:
    """The same parent as Gateway API's CEL rules compare them (the namespace as written)."""
    return (a.group, a.kind, a.name, a.namespace) == (b.group, b.kind, b.name, b.namespace)


def _version_service_problems(spec: RolloutSpec, config: GatewayApiRouting) -> list[tuple[tuple[str | int, ...], str]]:
    where = ("gateway_api", "version_service")
    unknown = sorted({p for p in _PLACEHOLDER.findall(config.version_service) if p not in ("service", "version")})
    if unknown:
        return [(where, f"unknown placeholder {{{unknown[0]}}}: only {{service}} and {{version}}")]
    if "{version}" not in config.version_service:
        return [(where, "must contain {version}: each version needs its own Service")]
    label = re.compile(DNS_LABEL_PATTERN)
    names: dict[str, str] = {}
    for version in spec.versions:
        name = config.service_name(spec.service, version.name)
        if len(name) > 63 or not label.match(name):
            return [(where, f"gives {name!r} for version {version.name}: not a Service name (DNS label, "
                            "at most 63 characters)")]  # fmt: skip
        if name in names:
            return [(where, f"gives {name!r} for both {names[name]} and {version.name}")]
        names[name] = version.name
    return []
