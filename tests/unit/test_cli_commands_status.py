"""Local `status` and `ping` under damaged state files and hostile Envoy / endpoint answers (fakes on 127.0.0.1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.cli import main
from controller.cli_ping import http_probe
from controller.engine.phases import CommandOutcome, Phase, RolloutState
from controller.engine.routing_model import DesiredRouting
from controller.routing.envoy import EnvoyFileRouter
from controller.state.file_store import FileStateStore
from controller.state.local_info import write_local_info
from tests.fakes.envoy_admin import FakeEnvoyAdmin


def state(name: str, **update: Any) -> RolloutState:
    return RolloutState(rollout=name, spec_digest="d", phase=Phase.PROGRESSING, step=1, reason="step 2/3: 10%",
                        **update)  # fmt: skip


@pytest.fixture()
def envoy() -> Iterator[FakeEnvoyAdmin]:
    with FakeEnvoyAdmin() as fake:
        yield fake


def endpoint(port: int, healthy: bool = True) -> dict[str, Any]:
    flags = {} if healthy else {"failed_active_health_check": True}
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "health_status": {"eds_health_status": "HEALTHY", **flags}}  # fmt: skip


def local_controller(tmp_path: Path, admin_url: str) -> Path:
    """A state dir whose local-controller.json points at `admin_url`, with routes for prod/shop (v1 90, v2 10)."""
    routes = tmp_path / "routes"
    routing = DesiredRouting(service="shop", namespace="prod", host="shop", versions=("v1", "v2"),
                             weights=(("v1", 90), ("v2", 10)))  # fmt: skip
    EnvoyFileRouter(routes, admin_url).initial_file([routing])
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    write_local_info(state_dir, admin_url, routes)
    return state_dir


def test_one_damaged_state_file_never_hides_the_others(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    FileStateStore(tmp_path).save(state("shop"))
    (tmp_path / "cart.state.json").write_bytes(b'{"rollout": "cart", "phase": "Nope"')
    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("rollout shop: Progressing, step 2: step 2/3: 10%")
    assert "rollout cart: state DAMAGED (the controller fails safe to the baseline): " in captured.err
    assert main(["status", "shop", "--state-dir", str(tmp_path)]) == 0
    assert "cart" not in capsys.readouterr().err
    assert main(["status", "cart", "--state-dir", str(tmp_path)]) == 1
    assert "rollout cart: state DAMAGED" in capsys.readouterr().err
    assert main(["status", "-o", "json", "--state-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["rollout"]["rollout"] for r in doc["rollouts"]] == ["shop"] and list(doc["damaged"]) == ["cart"]
    assert main(["abort", "cart", "--state-dir", str(tmp_path), "--no-wait"]) == 1
    assert "the rollout's state is damaged" in capsys.readouterr().err
    assert not (tmp_path / "cart.command").exists()


def test_status_shows_the_last_command_unconfirmed_routing_and_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = CommandOutcome(id="1-ab", command="promote", applied=False, reason="no ready pods for v2", at=1e9)
    FileStateStore(tmp_path).save(state(
        "shop", last_command=last, unconfirmed="Envoy did not confirm version 7 within 5s",
        drift="Envoy serves v1=100 instead of v1=90 v2=10", apply_failures=2, last_apply_error="admin unreachable",
    ))  # fmt: skip
    assert main(["status", "shop", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "last command: promote (1-ab) REFUSED at " in out and ": no ready pods for v2" in out
    assert "routing UNCONFIRMED: Envoy did not confirm version 7 within 5s" in out
    assert "drift: Envoy serves v1=100 instead of v1=90 v2=10" in out
    assert "last apply error (2 in a row): admin unreachable" in out
    assert "note: no local controller info in " in out


def test_status_table_from_what_envoy_serves_and_its_health_checks(
    tmp_path: Path, envoy: FakeEnvoyAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = local_controller(tmp_path, envoy.url)
    envoy.routes_file = tmp_path / "routes" / "routes.json"
    envoy.clusters = {"cluster_statuses": [
        {"name": "prod--shop--v1", "host_statuses": [endpoint(1), endpoint(2)]},
        {"name": "prod--shop--v2", "host_statuses": [endpoint(3, healthy=False)]},
    ]}  # fmt: skip
    FileStateStore(state_dir).save(state("shop"))
    assert main(["status", "shop", "--state-dir", str(state_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rollout shop (prod/shop): Progressing, step 2: step 2/3: 10%"
    assert [line.split() for line in lines[2:4]] == [
        ["v1", "90", "90.0%", "Serving", "2/2"], ["v2", "10", "10.0%", "NoReadyPods", "0/1"]]  # fmt: skip


@pytest.mark.parametrize("mode", ["garbage", "wrong_json", "error", "not_http", "huge"])
def test_status_survives_a_hostile_envoy_and_says_why_routing_is_unknown(
    tmp_path: Path, envoy: FakeEnvoyAdmin, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    state_dir = local_controller(tmp_path, envoy.url)
    FileStateStore(state_dir).save(state("shop"))
    envoy.mode = mode
    assert main(["status", "shop", "--state-dir", str(state_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rollout shop (prod/shop): Progressing")
    assert "routing error: cannot read Envoy's routes: " in out and "pods error: cannot read Envoy's cluster" in out
    assert "VERSION" not in out  # no table made up from nothing


@pytest.mark.parametrize(
    ("mode", "status"), [("confirm", 404), ("error", 500), ("drip", None), ("hang", None), ("not_http", None)]
)
def test_a_ping_request_is_bounded_and_fails_on_anything_but_2xx(
    envoy: FakeEnvoyAdmin, mode: str, status: int | None
) -> None:
    envoy.mode = mode
    probe = http_probe(f"{envoy.url}/health", timeout=0.5)
    assert probe.status == status and not probe.ok and "FAILED" in probe.describe()
    assert http_probe(f"{envoy.url}/ready", timeout=0.5).ok == (mode == "confirm")


def test_local_ping_requests_every_endpoint_envoy_lists(
    tmp_path: Path, envoy: FakeEnvoyAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeEnvoyAdmin() as app_v1, FakeEnvoyAdmin(mode="error") as app_v2:  # stand-ins for the versions' apps
        ports = [int(app.url.rsplit(":", 1)[1]) for app in (app_v1, app_v2)]
        envoy.clusters = {"cluster_statuses": [
            {"name": "prod--shop--v1", "host_statuses": [endpoint(ports[0])]},
            {"name": "prod--shop--v2", "host_statuses": [endpoint(ports[1])]},
        ]}  # fmt: skip
        state_dir = local_controller(tmp_path, envoy.url)
        argv = ["ping", "shop", "--state-dir", str(state_dir), "--count", "1", "--path", "/ready", "--timeout", "1"]
        assert main(argv) == 1  # v2 answers 500
        line = capsys.readouterr().out.strip()
        assert "v1: 1/1 ready, HTTP 200 in " in line and "v2: 1/1 ready, HTTP 500 in " in line and "FAILED" in line
        app_v2.mode = "confirm"
        assert main(argv) == 0
        assert app_v1.requests.count("/ready") == 2 and app_v2.requests.count("/ready") == 2
    assert main(["ping", "shop", "--state-dir", str(tmp_path), "--count", "1"]) == 1
    assert "no local controller info" in capsys.readouterr().err


def test_text_from_a_state_file_cannot_drive_the_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hostile = "\x1b]0;owned\x07\x1b[2J\u202egnirts"
    last = CommandOutcome(id="1-ab", command="pause", applied=True, reason=hostile, at=1e9)
    damaged = state("shop", last_command=last, drift=hostile).model_copy(update={"reason": hostile})
    FileStateStore(tmp_path).save(damaged)
    assert main(["status", "shop", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "?]0;owned??[2J?gnirts" in out


@pytest.mark.parametrize("wait", ["inf", "nan", "-1"])
def test_a_wait_that_is_not_a_finite_number_of_seconds_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], wait: str
) -> None:
    FileStateStore(tmp_path).save(state("shop"))
    assert main(["pause", "shop", "--state-dir", str(tmp_path), f"--wait={wait}"]) == 2
    assert "--wait must be a number of seconds >= 0" in capsys.readouterr().err
    assert not (tmp_path / "shop.command").exists()


def test_status_of_a_missing_state_directory_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--state-dir", str(tmp_path / "nope")]) == 1
    assert "no state directory " in capsys.readouterr().err
