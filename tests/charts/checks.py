"""Checks shared by the chart tests: pod hardening, probe ports, ServiceMonitor shape, the controller's
container, flags and watched namespaces."""

from __future__ import annotations

from typing import Any

from tests.charts.rendering import RAMP_NAMESPACE, Rendered

_MONITOR_SPEC_FIELDS = frozenset({"namespaceSelector", "selector", "endpoints", "jobLabel"})
_MONITOR_ENDPOINT_FIELDS = frozenset({"port", "path", "interval", "scrapeTimeout", "scheme"})


def service_monitor_problems(monitor: dict[str, Any]) -> list[str]:
    """No schema for monitoring.coreos.com ships with kubernetes-validate or with Ramp: check it by hand."""
    problems: list[str] = []
    if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion {monitor.get('apiVersion')!r}")
    if set(monitor) != {"apiVersion", "kind", "metadata", "spec"}:
        problems.append(f"top-level fields {sorted(monitor)}")
    spec = monitor.get("spec", {})
    if set(spec) - _MONITOR_SPEC_FIELDS:
        problems.append(f"unknown spec fields {sorted(set(spec) - _MONITOR_SPEC_FIELDS)}")
    if not spec.get("selector", {}).get("matchLabels"):
        problems.append("spec.selector.matchLabels is required (an empty selector matches every Service)")
    for endpoint in spec.get("endpoints", []):
        if set(endpoint) - _MONITOR_ENDPOINT_FIELDS:
            problems.append(f"unknown endpoint fields {sorted(set(endpoint) - _MONITOR_ENDPOINT_FIELDS)}")
        if not all(isinstance(endpoint.get(k, ""), str) for k in ("port", "path", "interval", "scrapeTimeout")):
            problems.append(f"endpoint fields must be strings: {endpoint}")
    return problems


def assert_hardened(pod_spec: dict[str, Any]) -> None:
    pod = pod_spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001
    assert isinstance(pod.get("fsGroup"), int)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod_spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context.get("privileged", False) is False
        assert context.get("runAsUser", 10001) == 10001
        resources = container["resources"]
        assert set(resources["requests"]) >= {"cpu", "memory"} and set(resources["limits"]) >= {"cpu", "memory"}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "a writable emptyDir at /tmp"
    assert not pod_spec.get("hostNetwork") and not pod_spec.get("hostPID") and not pod_spec.get("hostIPC")


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == port))


def controller_pod(rendered: Rendered) -> dict[str, Any]:
    template: dict[str, Any] = rendered.one("Deployment")["spec"]["template"]
    return template


def controller_container(rendered: Rendered) -> dict[str, Any]:
    containers = controller_pod(rendered)["spec"]["containers"]
    assert [c["name"] for c in containers] == ["controller"]
    container: dict[str, Any] = containers[0]
    return container


def flags(container: dict[str, Any]) -> dict[str, str]:
    """`--name=value` arguments as a dict; every argument must have that form."""
    assert "command" not in container, "the image's ENTRYPOINT (ramp controller) must be kept"
    parsed: dict[str, str] = {}
    for arg in container["args"]:
        name, sep, value = arg.partition("=")
        assert arg.startswith("--") and sep, arg
        assert name not in parsed, f"{name} given twice"
        parsed[name] = value
    return parsed


def service_account_name(rendered: Rendered) -> str:
    return str(rendered.one("ServiceAccount")["metadata"]["name"])


def watched_namespaces(rendered: Rendered) -> list[str] | None:
    """The namespaces the chart's values ask to manage: None for all (watchAllNamespaces), else the list, which
    defaults to the release namespace."""
    values = rendered.values
    if values["watchAllNamespaces"]:
        return None
    return list(values["watchNamespaces"]) or [RAMP_NAMESPACE]
