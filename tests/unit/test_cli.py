"""The `ramp` CLI, run in-process: validate, schema, plan."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import controller
from controller.cli import build_parser, main
from controller.cli_spec import format_duration
from controller.routing import istio
from controller.routing.crd_schema import CRD_ENV_VAR, PACKAGED_CRD_FILE, find_crd_file
from controller.routing.istio_render import virtual_service

REPO_ROOT = Path(__file__).resolve().parents[2]

BAD_SPEC = """\
service: shop
versions:
  - name: v1
    weight: -5
  - name: v2
    weight: 0
target: v2
gates:
  - metric: latency
    maxx: 100
"""
BAD_SPEC_PROBLEMS = [
    "bad.yaml:4: versions.0.weight: Input should be greater than or equal to 0",
    "bad.yaml:10: gates.0.maxx: Extra inputs are not permitted",
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)


@pytest.fixture
def bad_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "bad.yaml").write_text(BAD_SPEC)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "bad.yaml"


def test_validate_examples_ok(capsys: pytest.CaptureFixture[str], in_repo: None) -> None:
    assert run(capsys, "validate", "rollout-specs") == (
        0,
        [
            "ok  rollout-specs/custom-metrics.yaml (rollout cart: 4 steps)",
            "ok  rollout-specs/defaults.yaml (rollout checkout: 4 steps)",
            "ok  rollout-specs/demo.yaml (rollout demo: 4 steps)",
            "ok  rollout-specs/gateway-api.yaml (rollout details: 4 steps)",
            "ok  rollout-specs/hooks.yaml (rollout catalog: 4 steps)",
            "ok  rollout-specs/ingress.yaml (rollout storefront: 4 steps)",
            "ok  rollout-specs/loadtest.yaml (rollout ratings: 4 steps)",
            "ok  rollout-specs/notifications.yaml (rollout shop: 2 steps)",
            "ok  rollout-specs/statistical.yaml (rollout payments: 4 steps)",
            "ok  rollout-specs/templates.yml (metric template http-4xx-rate)",
            "ok  rollout-specs/three-versions.yaml (rollout reviews: 5 steps)",
        ],
        [],
    )


def test_validate_invalid_file(capsys: pytest.CaptureFixture[str], bad_spec: Path) -> None:
    assert run(capsys, "validate", "bad.yaml") == (1, [], BAD_SPEC_PROBLEMS)


def test_validate_reports_every_file_in_argument_order(
    capsys: pytest.CaptureFixture[str], bad_spec: Path, tmp_path: Path
) -> None:
    (tmp_path / "good.yml").write_text((REPO_ROOT / "rollout-specs" / "defaults.yaml").read_text())
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, "validate", "good.yml", "bad.yaml", "empty", "missing.yaml")
    assert code == 1
    assert out == ["ok  good.yml (rollout checkout: 4 steps)"]
    assert err == [
        *BAD_SPEC_PROBLEMS,
        "empty:1: (document): directory has no *.yaml or *.yml spec files",
        "missing.yaml:1: (document): no such file or directory",
    ]


def test_validate_directory_with_an_invalid_spec_fails(
    capsys: pytest.CaptureFixture[str], bad_spec: Path, tmp_path: Path
) -> None:
    code, out, err = run(capsys, "validate", str(tmp_path))
    assert code == 1 and out == []
    assert err == [f"{tmp_path}/{line}" for line in BAD_SPEC_PROBLEMS]


def test_validate_needs_a_path(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["validate"])
    assert exc.value.code == 2
    assert "the following arguments are required: PATH" in capsys.readouterr().err


def test_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "schema")
    assert code == 0 and err == []
    schema = json.loads("\n".join(out))
    assert schema["title"] == "RolloutSpec"
    assert schema["properties"]["service"]["type"] == "string"
    assert "apiVersion" in schema["properties"] and "api_version" not in schema["properties"]
    assert {"service", "versions", "target"} <= set(schema["required"])
    gate = schema["$defs"]["Gate"]["properties"]
    assert gate["mode"]["enum"] == ["threshold", "statistical", "both"] and gate["mode"]["default"] == "threshold"
    assert (gate["tolerance"]["default"], gate["tolerance"]["minimum"]) == (1.2, 1)
    assert (gate["alpha"]["default"], gate["alpha"]["exclusiveMinimum"], gate["alpha"]["exclusiveMaximum"]) == (
        0.01, 0, 1
    )
    assert "slow_ms" in gate
    assert out[1].startswith("  "), "indented JSON"


def yaml_plan(capsys: pytest.CaptureFixture[str], spec: str) -> tuple[list[dict[str, Any]], list[str], str]:
    code = main(["plan", spec])
    out, err = capsys.readouterr()
    assert code == 0, err
    return [d for d in yaml.safe_load_all(out) if d is not None], err.splitlines(), out


def test_plan_yaml(capsys: pytest.CaptureFixture[str], in_repo: None) -> None:
    docs, err, out = yaml_plan(capsys, "rollout-specs/demo.yaml")
    services = [d for d in docs if d["kind"] == "VirtualService"]
    rules = [d for d in docs if d["kind"] == "DestinationRule"]
    assert len(docs) == 12 and len(services) == 6 and len(rules) == 6  # baseline, 4 steps, promoted
    primary = [next(r for r in vs["spec"]["http"] if r["name"] == "ramp-primary") for vs in services]
    assert [{d["destination"]["subset"]: d["weight"] for d in r["route"]} for r in primary] == [
        {"v1": 100},
        {"v1": 100},
        {"v1": 90, "v2": 10},
        {"v1": 50, "v2": 50},
        {"v2": 100},
        {"v2": 100},
    ]
    header_step = services[1]["spec"]["http"][0]
    assert header_step["name"] == "ramp-header-v2"
    assert header_step["match"] == [{"headers": {"x-version": {"exact": "v2"}}}]
    titles = [line for line in out.splitlines() if line.startswith("# ") and not line.startswith("# routing")]
    assert titles[1::2] == [
        "# baseline (rollback target)",
        "# step 1/4: header x-version: v2 (duration 10s)",
        "# step 2/4: 10% (duration 10s)",
        "# step 3/4: 50% (duration 10s)",
        "# step 4/4: 100% (duration 5s)",
        "# promoted: v2 100%",
    ]
    assert titles[0] == "# ramp plan rollout-specs/demo.yaml: rollout demo, target v2, 6 states"
    assert "# routing: v1=90% v2=10% [x-version:v2->v2]" in out.splitlines()
    assert err == []  # validated against the packaged Istio CRDs, nothing to report


def test_plan_json(capsys: pytest.CaptureFixture[str], in_repo: None) -> None:
    code, out, _err = run(capsys, "plan", "rollout-specs/three-versions.yaml", "-o", "json")
    assert code == 0
    entries = json.loads("\n".join(out))
    assert [e["state"] for e in entries] == [
        "baseline", "step 1", "step 2", "step 3", "step 4", "step 5", "promoted",
    ]  # fmt: skip
    assert [e["step_index"] for e in entries] == [None, 0, 1, 2, 3, 4, None]
    assert entries[2]["title"] == "step 2/5: 33% (duration 5m)"
    assert entries[3]["title"] == "step 3/5: manual approval (waits for manual approval)"
    for entry in entries:
        assert [m["kind"] for m in entry["manifests"]] == ["VirtualService", "DestinationRule"]
        assert all(m["metadata"] == {"name": "reviews", "namespace": "shop", "labels": {
            "app.kubernetes.io/managed-by": "ramp"}} for m in entry["manifests"])  # fmt: skip
    split = entries[2]["manifests"][0]["spec"]["http"][1]["route"]
    assert {d["destination"]["subset"]: d["weight"] for d in split} == {"v1": 34, "v2": 33, "v3": 33}
    assert entries[2]["routing"] == "v1=34% v2=33% v3=33% [x-version:v3->v3]"


def test_plan_invalid_spec(capsys: pytest.CaptureFixture[str], bad_spec: Path) -> None:
    assert run(capsys, "plan", "bad.yaml") == (1, [], BAD_SPEC_PROBLEMS)
    assert run(capsys, "plan", "missing.yaml") == (
        1, [], ["missing.yaml:1: (document): cannot read: No such file or directory"]
    )  # fmt: skip


def test_plan_always_validates_a_missing_crd_override_is_an_error_not_a_skip(
    capsys: pytest.CaptureFixture[str], in_repo: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CRD_ENV_VAR, str(tmp_path / "absent.yaml"))
    code, out, err = run(capsys, "plan", "rollout-specs/defaults.yaml")
    assert code == 1 and out == []
    assert err == [
        f"ramp plan: cannot load the CRDs (Istio, Gateway API): Istio CRD file not found "
        f"(looked at {tmp_path / 'absent.yaml'}; set {CRD_ENV_VAR})"
    ]


def test_the_istio_crds_ship_with_the_package_and_name_their_source_and_licence() -> None:
    packaged = find_crd_file()
    assert packaged == PACKAGED_CRD_FILE and packaged.is_relative_to(Path(controller.__file__).parent)
    header = packaged.read_text().splitlines()[:4]
    assert any("istio/api" in line for line in header) and any("Apache License 2.0" in line for line in header)


def test_plan_with_a_missing_crds_option_fails(
    capsys: pytest.CaptureFixture[str], in_repo: None, tmp_path: Path
) -> None:
    code, out, err = run(capsys, "plan", "rollout-specs/demo.yaml", "--crds", str(tmp_path / "absent.yaml"))
    assert code == 1 and out == []
    assert err == [
        f"ramp plan: cannot load the CRDs (Istio, Gateway API): Istio CRD file not found "
        f"(looked at {tmp_path / 'absent.yaml'}; set {CRD_ENV_VAR})"
    ]


def test_plan_rejects_manifests_that_fail_the_crds(
    capsys: pytest.CaptureFixture[str], in_repo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(routing: Any) -> dict[str, Any]:
        manifest = virtual_service(routing)
        manifest["spec"]["http"][-1]["route"][0]["wieght"] = 1
        return manifest

    monkeypatch.setattr(istio, "virtual_service", broken)  # the Istio router's rendering, as `ramp plan` uses it
    crds = str(find_crd_file())
    code, out, err = run(capsys, "plan", "rollout-specs/defaults.yaml", "--crds", crds)
    assert code == 1 and out == []
    states = ["baseline", "step 1", "step 2", "step 3", "step 4", "promoted"]
    assert err == [
        *(
            f"rollout-specs/defaults.yaml: {state}: VirtualService checkout: $.spec.http[{index}].route[0].wieght: "
            "unknown field 'wieght' (Kubernetes would silently prune it)"
            for state, index in zip(states, [0, 1, 1, 1, 1, 0], strict=True)
        ),
        f"ramp plan: 6 manifest errors against {Path(crds).resolve()}",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"), [(10, "10s"), (90, "1m30s"), (0.5, "500ms"), (1.5, "1.5s"), (7200, "2h"), (0, "0s")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_commands_are_registered() -> None:
    parser = build_parser()
    help_text = parser.format_help()
    for command in ("validate", "schema", "plan"):
        assert command in help_text


def test_python_dash_m_controller(in_repo: None) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "controller", "validate", "rollout-specs/demo.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        0, "ok  rollout-specs/demo.yaml (rollout demo: 4 steps)\n", ""
    )  # fmt: skip
