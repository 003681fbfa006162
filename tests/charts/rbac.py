"""RBAC helpers shared by the chart tests: what a rendered chart grants (resolved through its bindings), which
Kubernetes API methods the code under controller/ calls (an AST scan), and how a request is authorized.

A grant is (namespace or None = cluster-wide, API group, resource, verb, resourceName or None = any name),
the same attributes Kubernetes' RBAC authorizer matches a request against.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client

from tests.charts.rendering import REPO_ROOT, Rendered

Grant = tuple[str | None, str, str, str, str | None]
CONTROLLER_DIR = REPO_ROOT / "controller"
# Raw requests through the ApiClient bypass the typed methods: the scan reports them too, so that they cannot
# slip past the table.
RAW_CALLS = frozenset({"call_api", "request"})
# Non-resource URLs every authenticated user may GET (the system:discovery / system:public-info-viewer roles).
DISCOVERY_PATHS = re.compile(r"^/(api|apis|version|openapi|healthz|livez|readyz)(/.*)?$")


AGGREGATE_LABELS = frozenset(f"rbac.authorization.k8s.io/aggregate-to-{role}" for role in ("admin", "edit", "view"))


def is_aggregated(role: Mapping[str, Any]) -> bool:
    """A ClusterRole whose rules Kubernetes adds to the built-in admin/edit/view roles: bound by no one here."""
    labels = role["metadata"].get("labels") or {}
    return any(labels.get(label) == "true" for label in AGGREGATE_LABELS)


def rules_grants(rules: Iterable[Mapping[str, list[str]]], namespace: str | None) -> set[Grant]:
    """The grants of RBAC `rules` bound in `namespace` (None: a ClusterRoleBinding)."""
    grants: set[Grant] = set()
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        names: list[str | None] = list(rule.get("resourceNames") or [None])
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    grants |= {(namespace, group, resource, verb, name) for name in names}
    return grants


def granted(rendered: Rendered, account: tuple[str, str]) -> set[Grant]:
    """Every permission `account` (namespace, name) gets, resolved through the rendered bindings. Every binding
    must bind exactly that ServiceAccount, and every rendered role must be bound exactly once - except the
    aggregated ClusterRoles, which the chart binds to no one (Kubernetes folds them into admin/edit/view)."""
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in rendered.of_kind("Role")}
    cluster_roles = {r["metadata"]["name"]: r for r in rendered.of_kind("ClusterRole") if not is_aggregated(r)}
    grants: set[Grant] = set()
    for binding in rendered.of_kind("RoleBinding") + rendered.of_kind("ClusterRoleBinding"):
        subjects = {(s["namespace"], s["name"]) for s in binding["subjects"] if s["kind"] == "ServiceAccount"}
        assert subjects == {account} and len(binding["subjects"]) == 1, binding["metadata"]["name"]
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        namespace = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        # A binding to a role that is not rendered (or bound twice) raises KeyError here.
        role = roles.pop((namespace, ref["name"])) if ref["kind"] == "Role" else cluster_roles.pop(ref["name"])
        grants |= rules_grants(role["rules"], namespace)
    assert roles == {} and cluster_roles == {}, "every rendered role is bound (and only once)"
    return grants


# ---------------------------------------------------------------------------------------------- the code's calls


@functools.cache
def kubernetes_api_methods() -> frozenset[str]:
    """The request methods of every generated API class of the installed `kubernetes` client."""
    names: set[str] = set()
    for class_name in dir(kubernetes.client):
        cls = getattr(kubernetes.client, class_name)
        if not (inspect.isclass(cls) and cls.__module__.startswith("kubernetes.client.api.")):
            continue
        members = set(vars(cls))
        names |= {m for m in members if not m.startswith("_") and f"{m}_with_http_info" in members}
    assert {"list_namespaced_pod", "create_namespaced_custom_object"} <= names  # the introspection works
    return frozenset(names)


@dataclass(frozen=True)
class CallSite:
    path: Path  # relative to the scanned directory's parent: controller/k8s/events.py
    line: int
    function: str | None  # the innermost enclosing function's name


def _sites(tree: ast.AST, wanted: frozenset[str]) -> Iterable[tuple[str, int, str | None]]:
    """(called name, line, enclosing function) of every attribute or string constant naming a wanted method."""

    def visit(node: ast.AST, function: str | None) -> Iterable[tuple[str, int, str | None]]:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.Attribute) and node.attr in wanted:
            yield node.attr, node.lineno, function
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in wanted:
            yield node.value, node.lineno, function  # getattr(api, "list_namespaced_pod")
        for child in ast.iter_child_nodes(node):
            yield from visit(child, function)

    return visit(tree, None)


def kubernetes_calls(root: Path = CONTROLLER_DIR) -> dict[str, list[CallSite]]:
    """Method name -> where the code under `root` names it, for every Kubernetes API method (and raw call)."""
    wanted = kubernetes_api_methods() | RAW_CALLS
    found: dict[str, list[CallSite]] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, line, function in _sites(tree, wanted):
            if name == "request" and not _is_api_client_request(path, line):
                continue
            found.setdefault(name, []).append(CallSite(path.relative_to(root.parent), line, function))
    return found


def _is_api_client_request(path: Path, line: int) -> bool:
    """`request` is a common word: only `<...>api_client.request(` / `rest_client.request(` count as raw calls."""
    text = path.read_text(encoding="utf-8").splitlines()[line - 1]
    return re.search(r"(api_client|rest_client|ApiClient\(.*\))\.request\(", text) is not None


def references(name: str, root: Path = CONTROLLER_DIR) -> list[Path]:
    """Files under `root` that use the name `name` (an attribute or a plain name), its definition excluded."""
    users: list[Path] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr == name) or (
                isinstance(node, ast.Name) and node.id == name
            ):
                users.append(path.relative_to(root.parent))
                break
    return users


# ---------------------------------------------------------------------------------------------- authorization


@dataclass(frozen=True)
class RequestAttributes:
    """What Kubernetes' RBAC authorizer sees of a request (k8s.io/apiserver's RequestInfo)."""

    verb: str
    group: str | None  # None: a non-resource URL
    resource: str  # "pods/proxy" for a subresource; the path for a non-resource URL
    namespace: str | None
    name: str | None

    def __str__(self) -> str:
        if self.group is None:
            return f"{self.verb} {self.resource}"
        where = f" in namespace {self.namespace}" if self.namespace else " (cluster-wide)"
        named = f" named {self.name}" if self.name else ""
        return f"{self.verb} {self.resource}.{self.group or 'core'}{named}{where}"


_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def request_attributes(method: str, path: str, query: Mapping[str, str]) -> RequestAttributes:
    parts = [p for p in path.split("/") if p]
    method = method.upper()
    if len(parts) >= 2 and parts[0] == "api":
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return RequestAttributes(method.lower(), None, path, None, None)
    if not rest:
        return RequestAttributes(method.lower(), None, path, None, None)  # discovery of a group version
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    if method == "GET":
        verb = "watch" if query.get("watch") in ("true", "1") else "get" if name else "list"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    return RequestAttributes(verb, group, resource, namespace, name)


def permits(grants: set[Grant], request: RequestAttributes) -> bool:
    """RBAC's decision: some grant matches (cluster-wide grants match every namespace; unnamed ones every name)."""
    if request.group is None:
        return request.verb == "get" and DISCOVERY_PATHS.match(request.resource) is not None
    return any(
        (scope, request.group, request.resource, request.verb, name) in grants
        for scope in {None, request.namespace}
        for name in {None, request.name}
    )
