"""Imports point one way: core <- adapters <- entry points; a router is one module plus a registration.

Read from the source with `ast` (function-level imports included), so a lazy import cannot hide a wrong
direction. The core is the engine (with its ports and the desired-routing model), the plan, the spec models and
the pure analysis (gates, statistics, metric values); adapters are the routers, the Kubernetes and local
processes, notifiers, hook clients, the state directory and the Prometheus client; entry points are the CLI,
the controller wiring and the backend factory. The runner is given its adapters (router, store, metrics, hook calls,
post-rollout hooks) by the entry points; it imports none.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from controller import cluster_backend
from controller.routing.route_kind import RouteKind
from controller.spec_routers import ROUTER_NAMES

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "controller"
ADAPTER_PACKAGES = ("controller.routing", "controller.k8s", "controller.local", "controller.notify",
                    "controller.state", "controller.loadtest", "controller.hooks")  # fmt: skip
# The hook answers' types are the core's (decide reads them); the hook clients are adapters.
CORE_IN_ADAPTER_PACKAGES = ("controller.hooks.results",)
# prometheus_parse is pure (answers in, numbers out): the core may use it.
ADAPTER_MODULES = ("controller.analysis.prometheus", "controller.analysis.prometheus_http",
                   "controller.analysis.prometheus_auth")  # fmt: skip
ENTRY_POINTS = ("controller.cli", "controller.cluster_controller", "controller.cluster_backend", "controller.demo",
                "controller.controller_loop", "controller.__main__")  # fmt: skip


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("controller")}


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def is_adapter(name: str) -> bool:
    return (within(name, ADAPTER_PACKAGES) or name in ADAPTER_MODULES) and name not in CORE_IN_ADAPTER_PACKAGES


def is_entry_point(name: str) -> bool:
    return within(name, ENTRY_POINTS) or name.startswith("controller.cli_")


def core_modules() -> list[Path]:
    core = [*sorted((PACKAGE / "engine").glob("*.py")), PACKAGE / "plan.py", PACKAGE / "weights.py"]
    core += sorted(PACKAGE.glob("spec*.py"))
    core += [p for p in sorted((PACKAGE / "analysis").glob("*.py")) if module_name(p) not in ADAPTER_MODULES]
    return core


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_no_adapter_and_no_entry_point(path: Path) -> None:
    wrong = sorted(name for name in imports_of(path) if is_adapter(name) or is_entry_point(name))
    assert wrong == [], f"{module_name(path)} (core) imports {wrong}"


def adapter_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if is_adapter(module_name(p))]


@pytest.mark.parametrize("path", adapter_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_adapters_never_import_entry_points(path: Path) -> None:
    wrong = sorted(name for name in imports_of(path) if is_entry_point(name))
    assert wrong == [], f"{module_name(path)} (adapter) imports {wrong}"


def test_every_router_a_spec_may_name_is_registered_and_nothing_else() -> None:
    assert set(cluster_backend.ROUTERS) == set(ROUTER_NAMES)
    assert cluster_backend.DEFAULT_ROUTER == "istio"


@pytest.mark.parametrize("name", sorted(cluster_backend.ROUTERS))
def test_each_router_is_a_route_kind_named_as_registered(name: str) -> None:
    kind: RouteKind = cluster_backend.ROUTERS[name]()
    assert kind.router == name
    for method in ("render", "check", "merge", "observed", "not_in_effect", "prepare", "forget", "parse"):
        assert callable(getattr(kind, method)), f"{name} lacks {method}"


def test_one_module_per_router_and_only_the_factory_builds_backends() -> None:
    """Router classes are constructed only by the factory's registry (the CLI and the controller use
    `cluster_backend`); each router class lives in its own module under controller/routing."""
    modules = {cluster_backend.ROUTERS[name]().__class__.__module__ for name in cluster_backend.ROUTERS}
    assert len(modules) == len(cluster_backend.ROUTERS) and all(m.startswith("controller.routing.") for m in modules)
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for constructor in ("IstioBackend(", "IstioRoutes(", "GatewayApiRoutes(", "RouteObjectBackend("):
            allowed = (*modules, "controller.routing.object_backend", "controller.cluster_backend")
            if constructor in text and module_name(path) not in allowed:
                pytest.fail(f"{module_name(path)} constructs {constructor[:-1]}: use controller.cluster_backend")
