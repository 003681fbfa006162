"""Every values file under `charts/*/ci/` renders, lints clean, and every manifest validates: Kubernetes
kinds with kubernetes-validate (strict, its default Kubernetes version), Istio kinds against Istio's
CRDs (controller.routing.crd_schema, strict), HTTPRoutes against the packaged Gateway API CRD (strict schema,
and its CEL rules as the apiserver evaluates them, tests/k8s/crd_validation). Under CI a missing CRD file is a
failure.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from controller.routing.crd_schema import CRD_ENV_VAR, IstioSchemas, RouteSchemas, find_crd_file
from tests.charts.checks import service_monitor_problems
from tests.charts.rendering import (
    ALL_CI,
    GATEWAY_API_CRD,
    GATEWAY_API_KINDS,
    ISTIO_KINDS,
    K8S_VERSION,
    MICRO_CI,
    MICRO_GATEWAY_API_CI,
    MICRO_ISTIO_CI,
    RAMP_CHART,
    RAMP_CI,
    ROUTE_KINDS,
    _ids,
    ci_values,
    render_ci,
)
from tests.k8s.crd_validation import CrdVersion, crd_versions


def test_ci_values_files_cover_the_required_cases() -> None:
    assert {p.stem for p in RAMP_CI} >= {
        "defaults-values", "single-namespace-values", "multi-namespace-values", "servicemonitor-values",
        "gateway-api-values",
    }  # fmt: skip
    assert {p.stem for p in MICRO_CI} >= {
        "two-versions-values", "seed-three-versions-values", "retire-v2-values", "single-version-values",
        "gateway-api-values",
    }  # fmt: skip
    assert MICRO_ISTIO_CI and MICRO_GATEWAY_API_CI and sorted(MICRO_ISTIO_CI + MICRO_GATEWAY_API_CI) == MICRO_CI


# ---------------------------------------------------------------------------------------------- validation


@pytest.fixture(scope="module")
def istio_schemas() -> IstioSchemas:
    path = find_crd_file()  # the copy shipped in the package (or $RAMP_ISTIO_CRDS)
    assert path is not None, f"Istio CRD file not found (${CRD_ENV_VAR} points nowhere?)"
    return IstioSchemas.load(path)


@pytest.fixture(scope="module")
def route_schemas() -> RouteSchemas:
    """What the controller validates its writes with: the Istio CRDs and the packaged Gateway API CRD."""
    return RouteSchemas.load()


@pytest.fixture(scope="module")
def http_route_crd() -> CrdVersion:
    """HTTPRoute v1 as the apiserver validates it: the schema and the CEL rules."""
    (crd,) = [d for d in yaml.safe_load_all(GATEWAY_API_CRD.read_text(encoding="utf-8")) if d]
    (v1,) = [v for v in crd_versions(crd) if v.name == "v1"]
    return v1


def _k8s_problem(manifest: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return f"{manifest['kind']}/{manifest['metadata']['name']}: {where}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        return f"{manifest['kind']}: {exc.message}"
    return None


@pytest.mark.parametrize(("chart", "path"), ALL_CI, ids=[f"{c.name}-{p.stem}" for c, p in ALL_CI])
def test_every_manifest_is_valid_kubernetes(chart: Path, path: Path) -> None:
    rendered = render_ci(path)
    assert rendered.manifests, "nothing rendered"
    problems: list[str] = []
    for manifest in rendered.manifests:
        if manifest["kind"] in ROUTE_KINDS:
            continue  # test_istio_manifests_match_the_crds, test_http_routes_match_the_crd
        if manifest["kind"] == "ServiceMonitor":
            problems += service_monitor_problems(manifest)
            continue
        problem = _k8s_problem(manifest)
        if problem:
            problems.append(problem)
    assert problems == []
    names = [(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]) for m in rendered.manifests]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


def test_the_ramp_charts_crds_are_valid_kubernetes() -> None:
    """charts/ramp/crds/ (installed by Helm before the templates, never templated): the same strict check."""
    files = sorted((RAMP_CHART / "crds").iterdir())
    assert [f.name for f in files] == ["ramprollouts.ramp.dev.yaml"]
    documents = [doc for f in files for doc in yaml.safe_load_all(f.read_text(encoding="utf-8")) if doc]
    assert [d["kind"] for d in documents] == ["CustomResourceDefinition"]
    assert [_k8s_problem(d) for d in documents] == [None]


def test_kubernetes_validation_is_strict() -> None:
    """The validator used above rejects a misspelt field (it would otherwise be silently pruned)."""
    deployment = render_ci(RAMP_CHART / "ci" / "defaults-values.yaml").one("Deployment")
    assert _k8s_problem(deployment) is None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesytem"] = True
    try:
        assert "readOnlyRootFilesytem" in (_k8s_problem(deployment) or "")
    finally:
        del container["securityContext"]["readOnlyRootFilesytem"]


@pytest.mark.parametrize("path", MICRO_ISTIO_CI, ids=_ids(MICRO_ISTIO_CI))
def test_istio_manifests_match_the_crds(path: Path, istio_schemas: IstioSchemas) -> None:
    rendered = render_ci(path)
    istio = [m for m in rendered.manifests if m["kind"] in ISTIO_KINDS]
    assert sorted(m["kind"] for m in istio) == ["DestinationRule", "VirtualService"]
    for manifest in istio:
        assert istio_schemas.validate(manifest) == [], manifest["kind"]
    assert not [m for m in rendered.manifests if m["kind"] in GATEWAY_API_KINDS]


@pytest.mark.parametrize("path", MICRO_GATEWAY_API_CI, ids=_ids(MICRO_GATEWAY_API_CI))
def test_http_routes_match_the_crd(path: Path, route_schemas: RouteSchemas, http_route_crd: CrdVersion) -> None:
    """router gateway-api: one HTTPRoute, valid by the strict schema (no field the apiserver would prune) and
    by the CEL rules; no Istio object."""
    rendered = render_ci(path)
    routes = [m for m in rendered.manifests if m["kind"] in ROUTE_KINDS]
    assert [m["kind"] for m in routes] == ["HTTPRoute"]
    assert route_schemas.validate(routes[0]) == []
    stored = copy.deepcopy(routes[0])
    assert http_route_crd.admit(stored) == [], "nothing pruned"
    assert http_route_crd.validate(stored) == []


def test_http_route_validation_is_live(http_route_crd: CrdVersion, route_schemas: RouteSchemas) -> None:
    """The validators used above refuse what the apiserver refuses: a Service backendRef without a port (a CEL
    rule) and a misspelt field (the strict schema)."""
    route = copy.deepcopy(render_ci(MICRO_GATEWAY_API_CI[0]).one("HTTPRoute"))
    del route["spec"]["rules"][-1]["backendRefs"][0]["port"]
    http_route_crd.admit(route)
    assert [c.message for c in http_route_crd.validate(route)] == [
        'Invalid value: "object": Must have port for Service reference'
    ]
    route["spec"]["rules"][-1]["backendRefs"][0]["wieght"] = 1
    assert any("wieght" in problem for problem in route_schemas.validate(route))


def test_ramp_chart_renders_no_route_objects() -> None:
    for path in RAMP_CI:
        assert not [m for m in render_ci(path).manifests if m["kind"] in ROUTE_KINDS]


@pytest.mark.parametrize(("chart", "path"), ALL_CI, ids=[f"{c.name}-{p.stem}" for c, p in ALL_CI])
def test_lint_is_clean(chart: Path, path: Path) -> None:
    report = helm.lint(chart, ci_values(path), strict=True, namespace="lint")
    serious = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert serious == [] and report["errors"] == []
