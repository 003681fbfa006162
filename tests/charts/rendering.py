"""Rendering the Helm charts with the real Helm engine (helm-python-sdk, no helm binary), shared by the chart tests."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from controller.routing.crd_schema import GATEWAY_API_CRD_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]
RAMP_CHART = REPO_ROOT / "charts" / "ramp"
MICRO_CHART = REPO_ROOT / "charts" / "microservice"
RELEASE = "ramp"
RAMP_NAMESPACE = "ramp-system"
MICRO_NAMESPACE = "apps"  # the release namespace; a values file without `namespace` lands here
K8S_VERSION = kubernetes_validate.latest_version()  # the version kubernetes-validate checks by default
ISTIO_KINDS = frozenset({"VirtualService", "DestinationRule"})
GATEWAY_API_KINDS = frozenset({"HTTPRoute"})
ROUTE_KINDS = ISTIO_KINDS | GATEWAY_API_KINDS  # custom resources: validated against their CRDs, not kubernetes-validate
GATEWAY_API_CRD = GATEWAY_API_CRD_FILE  # the packaged HTTPRoute CRD (Gateway API v1.6.1)

RAMP_CI = sorted((RAMP_CHART / "ci").glob("*.yaml"))
MICRO_CI = sorted((MICRO_CHART / "ci").glob("*.yaml"))
ALL_CI = [(RAMP_CHART, p) for p in RAMP_CI] + [(MICRO_CHART, p) for p in MICRO_CI]


def _router(path: Path) -> str:
    """The microservice chart's router a values file selects (the chart's default: istio)."""
    return str((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("router") or "istio")


MICRO_ISTIO_CI = [p for p in MICRO_CI if _router(p) == "istio"]
MICRO_GATEWAY_API_CI = [p for p in MICRO_CI if _router(p) == "gateway-api"]


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


# ---------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Rendered:
    files: dict[str, str]  # template path -> rendered text, as Helm returns it
    manifests: tuple[dict[str, Any], ...]
    values: dict[str, Any]  # the values Helm actually used (chart defaults coalesced with the overrides)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected exactly one {kind}, got {[m['metadata']['name'] for m in found]}"
        return found[0]


def render(chart: Path, values: dict[str, Any] | None = None, namespace: str = RAMP_NAMESPACE) -> Rendered:
    """helm template: Chart.load + Chart.render (which validates values.schema.json first)."""
    with helm.Chart.load(chart) as loaded:
        files = loaded.render(values or {}, name=RELEASE, namespace=namespace)
        merged = loaded.merge_values(values or {})
    manifests = tuple(
        doc
        for path, text in sorted(files.items())
        if path.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    )
    return Rendered(files, manifests, merged)


def ci_values(path: Path) -> dict[str, Any]:
    """A values file read by Helm's own YAML parser (as `helm -f` would)."""
    return helm.values_from_yaml(path.read_text(encoding="utf-8"))


@functools.cache
def render_ci(path: Path) -> Rendered:
    chart = path.parent.parent
    namespace = RAMP_NAMESPACE if chart == RAMP_CHART else MICRO_NAMESPACE
    return render(chart, ci_values(path), namespace)


def render_error(chart: Path, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as caught:
        render(chart, values)
    return str(caught.value)
