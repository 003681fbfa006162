"""Local-mode people's commands with defined outcomes: the CLI (in-process, `--state-dir`) against the real
RolloutRunner on a FileStateStore (recording router, fake clock) ticking on a background thread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.analysis.metrics import VersionMetrics
from controller.cli import build_parser, main
from controller.cli_commands import LOST, LocalTarget
from controller.cli_common import new_request_id, parse_weights
from controller.engine.commands import CommandRequest
from controller.engine.phases import Command, Phase
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.observability import configure_logging
from controller.state.file_store import FileStateStore
from tests.k8s.cli_controller import THREE_VERSIONS_YAML, healthy, run_to_end, ticking
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, FakeClock, FixedMetrics, RecordingRouter, spec


class Local:
    """A local controller (runner + state directory) and the CLI pointed at it."""

    def __init__(self, state_dir: Path, yaml_text: str, metrics: dict[str, VersionMetrics]) -> None:
        configure_logging(level="warning")
        self.state_dir, self.clock, self.router = state_dir, FakeClock(), RecordingRouter()
        self.store = FileStateStore(state_dir)
        self.runner = RolloutRunner(self.router, FixedMetrics(metrics), self.store, clock=self.clock)
        self.runner.set_rollouts([ManagedRollout.from_spec(spec(yaml_text))])

    def ramp(self, *argv: str) -> int:
        return main([*argv, "--state-dir", str(self.state_dir)])

    def ticks(self, n: int) -> None:
        for _ in range(n):
            self.runner.tick()
            self.clock.advance(5)

    def weights(self) -> dict[str, int]:
        return {v: w for v, w in self.router.applied[-1].weights if w}


def test_abort_after_promoted_reverts_to_the_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local = Local(tmp_path, NO_APPROVAL_YAML, healthy("v1", "v2"))
    run_to_end(local.runner, local.clock)
    assert local.weights() == {"v2": 100}
    with ticking(local.runner, local.clock):
        assert local.ramp("abort", "shop", "--wait", "20") == 0
    assert capsys.readouterr().out.strip().startswith("aborted after promotion by user: traffic back to the baseline")
    state = local.store.load("shop")
    assert state is not None and state.phase == Phase.ROLLED_BACK and state.last_command is not None
    assert state.last_command.applied and state.history[-1].phase == Phase.ROLLED_BACK
    assert local.weights() == {"v1": 100}


def test_set_weights_after_promoted_changes_only_the_named_versions_and_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = Local(tmp_path, THREE_VERSIONS_YAML, healthy("v1", "v2", "v3"))
    run_to_end(local.runner, local.clock)
    with ticking(local.runner, local.clock):
        assert local.ramp("set-weights", "shop", "v2=100", "--wait", "20") == 0
        assert local.ramp("set-weights", "shop", "v3=300", "--wait", "20") == 0
    assert capsys.readouterr().out.splitlines() == [
        "manual weights v1=0 (0%), v2=100 (50%), v3=100 (50%) set by user",
        "manual weights v1=0 (0%), v2=100 (25%), v3=300 (75%) set by user",
    ]
    local.ticks(5)
    assert local.weights() == {"v2": 25, "v3": 75}
    state = local.store.load("shop")
    assert state is not None and state.phase == Phase.PROMOTED and state.override == {"v1": 0, "v2": 100, "v3": 300}


def test_a_second_command_is_refused_while_the_first_is_pending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = Local(tmp_path, NO_APPROVAL_YAML, healthy("v1", "v2"))
    local.ticks(3)
    assert local.ramp("abort", "shop", "--no-wait") == 0
    assert "queued" in capsys.readouterr().out
    assert local.ramp("resume", "shop") == 1
    err = capsys.readouterr().err
    assert "refused: another command is pending: abort (id " in err and "is still waiting for the controller" in err
    local.ticks(1)
    state = local.store.load("shop")
    assert state is not None and state.phase == Phase.ROLLED_BACK
    assert state.last_command is not None and state.last_command.command == "abort" and state.last_command.applied


@pytest.mark.parametrize("command", ["promote", "resume", "pause"])
def test_commands_on_a_rolled_back_rollout_are_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    local = Local(tmp_path, NO_APPROVAL_YAML, {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 40, {})})
    run_to_end(local.runner, local.clock)
    with ticking(local.runner, local.clock):
        assert local.ramp(command, "shop", "--wait", "20") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ramp {command}: refused: the rollout is RolledBack")
    state = local.store.load("shop")
    assert state is not None and state.last_command is not None and not state.last_command.applied
    assert local.weights() == {"v1": 100}


def test_not_picked_up_in_time_exits_3_and_stays_queued(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local = Local(tmp_path, NO_APPROVAL_YAML, healthy("v1", "v2"))
    local.ticks(1)
    assert local.ramp("pause", "shop", "--wait", "0.2") == 3
    assert "is still queued: the controller has not ticked within 0.2s" in capsys.readouterr().err
    pending = local.store.pending_command("shop")
    assert pending is not None and pending.command == Command.PAUSE
    local.ticks(1)
    state = local.store.load("shop")
    assert state is not None and state.phase == Phase.PAUSED and state.last_command is not None
    assert state.last_command.id == pending.id and state.last_command.applied


def test_a_command_removed_without_an_outcome_is_reported(tmp_path: Path) -> None:
    local = Local(tmp_path, NO_APPROVAL_YAML, healthy("v1", "v2"))
    local.ticks(1)
    target = LocalTarget(tmp_path, "shop")
    request = CommandRequest(id=new_request_id(), command=Command.PAUSE)
    assert target.prepare(request) is None and target.submit(request) is None
    assert target.poll(request.id).outcome is None and target.poll(request.id).lost is None
    local.store.clear_command("shop")
    assert target.poll(request.id).lost == LOST


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["../../x=50"], "is not a valid name (a DNS label"),
        (["V1=50"], "is not a valid name"),
        (["v1=-5"], "whole number from 0 to 1000000"),
        (["v1=1e3"], "whole number"),
        (["v1=\u0663"], "whole number"),  # a non-ASCII digit
        (["v1=1000001"], "whole number"),
        (["v1"], "expected VERSION=WEIGHT"),
        (["v1=1", "v1=2"], "given twice"),
        ([f"{'a' * 64}=1"], "is not a valid name"),
    ],
)
def test_set_weights_refuses_bad_names_and_numbers_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    local = Local(tmp_path, NO_APPROVAL_YAML, healthy("v1", "v2"))
    local.ticks(1)
    assert local.ramp("set-weights", "shop", *argv) == 2
    assert message in capsys.readouterr().err
    assert local.store.pending_command("shop") is None
    with pytest.raises(ValueError, match=r"VERSION=WEIGHT|valid name|whole number|twice"):
        parse_weights(argv)


def test_a_rollout_name_is_never_a_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "x.state.json").write_text("{}")
    for name in ("../x", ".hidden", "a/b"):
        assert main(["abort", name, "--state-dir", str(tmp_path / "state")]) == 2
        assert "is not a rollout name" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == []


def test_set_weights_on_a_running_rollout_is_refused_at_once_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = Local(tmp_path, NO_APPROVAL_YAML, healthy("v1", "v2"))
    local.ticks(3)
    assert local.ramp("set-weights", "shop", "v1=100") == 1
    assert "a rollout (shop) is Progressing at step 2" in capsys.readouterr().err
    with ticking(local.runner, local.clock):
        assert local.ramp("set-weights", "shop", "v1=100", "--force", "--wait", "20") == 0
    state = local.store.load("shop")
    assert state is not None and state.phase == Phase.PAUSED and state.override == {"v1": 100, "v2": 10}


def test_help_documents_the_exit_codes() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in ("pause", "resume", "abort", "promote", "set-weights"):
        text = sub.choices[command].format_help()  # type: ignore[attr-defined]
        assert "exit codes: 0 applied" in text and "3 still queued" in text and "--no-wait" in text


def test_request_ids_are_unique_and_valid() -> None:
    ids = {new_request_id() for _ in range(200)}
    assert len(ids) == 200
    for request_id in ids:
        CommandRequest(id=request_id, command=Command.PAUSE)  # fits the stored format
    assert json.loads(CommandRequest(id=next(iter(ids)), command=Command.ABORT).encode())["command"] == "abort"
