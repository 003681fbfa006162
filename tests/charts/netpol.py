"""A small evaluator of networking.k8s.io/v1 NetworkPolicy rules, after the Kubernetes documentation: the chart
tests ask it whether a given connection would be allowed, instead of only comparing YAML.

Semantics implemented: a rule allows a connection when one of its peers matches AND one of its ports matches;
a rule without `to`/`from` matches every peer and one without `ports` every port; a peer with namespaceSelector
and podSelector needs both (podSelector alone: pods in the policy's namespace); an ipBlock matches addresses in
`cidr` but not in `except` (and never a pod selected by labels). Label selectors: matchLabels and matchExpressions.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """The other side of a connection: a pod (namespace + labels) or a plain address."""

    ip: str | None = None
    namespace: str | None = None
    namespace_labels: dict[str, str] = field(default_factory=dict)
    pod_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def pod(cls, namespace: str, labels: dict[str, str], ip: str = "10.244.1.7") -> Endpoint:
        return cls(ip, namespace, {"kubernetes.io/metadata.name": namespace}, dict(labels))

    @classmethod
    def address(cls, ip: str) -> Endpoint:
        return cls(ip)


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def peer_matches(peer: dict[str, Any], other: Endpoint, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        if other.ip is None or other.namespace is not None:
            return False  # ipBlocks are meant for addresses outside the cluster's pods
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        inside = address in ipaddress.ip_network(block["cidr"], strict=False)
        excluded = any(address in ipaddress.ip_network(c, strict=False) for c in block.get("except") or [])
        return inside and not excluded
    if other.namespace is None:
        return False  # selectors only ever match pods
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selector_matches(peer.get("podSelector"), other.pod_labels)


def port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        start = entry.get("port")
        if start is None:
            return True
        end = entry.get("endPort", start)
        if isinstance(start, int) and start <= port <= end:
            return True
    return False


def allows(policy: dict[str, Any], direction: str, other: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Would `policy` let the selected pods talk to (egress) or be reached by (ingress) `other` on `port`?"""
    spec = policy["spec"]
    kind = {"egress": "Egress", "ingress": "Ingress"}[direction]
    if kind not in spec.get("policyTypes", ["Ingress"]):
        return True  # this policy does not restrict that direction
    peers_key = "to" if direction == "egress" else "from"
    namespace = policy["metadata"]["namespace"]
    for rule in spec.get(direction) or []:
        peers = rule.get(peers_key)
        if peers and not any(peer_matches(p, other, namespace) for p in peers):
            continue
        if port_matches(rule.get("ports"), port, protocol):
            return True
    return False
