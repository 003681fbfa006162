"""`ramp report` from a local state directory: the runner's ticks -> timeline file -> report inputs -> charts.

The rollout is driven by the real RolloutRunner (injected clock, fixed metrics), observed by the real
TimelineFile; the report is read back as `ramp report --state-dir` does."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from controller.analysis.metrics import VersionMetrics
from controller.cli import main
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.report.build import build_report
from controller.report.local_source import ReportSourceError, local_report_inputs
from controller.state.file_store import FileStateStore
from controller.state.timeline_file import MAX_TIMELINE_BYTES, TimelineFile, read_timeline, timeline_path
from tests.unit.engine_fixtures import FakeClock, FixedMetrics, RecordingRouter, spec
from tests.unit.test_statistical_gates import GrowingMetrics

STATISTICAL_YAML = """
service: shop
namespace: prod
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {header: {value: v2}, duration: 10s}
  - {weight: 10, duration: 10s}
  - {weight: 50, duration: 10s}
gates:
  - {metric: error_rate, mode: both, max: 2, stable_margin: 1, alpha: 0.05}
schedule: {interval: 5s}
"""


def run_rollout(state_dir: Path, ticks: int, fail_at: int | None = None) -> GrowingMetrics:
    clock = FakeClock()
    source = GrowingMetrics(0.01)  # counters growing every fetch: v1 and v2 at 1% errors
    runner = RolloutRunner(RecordingRouter(), source, FileStateStore(state_dir), clock=clock,
                           observers=[TimelineFile(state_dir)])  # fmt: skip
    runner.set_rollouts([ManagedRollout.from_spec(spec(STATISTICAL_YAML))])
    for i in range(ticks):
        if i == fail_at:
            source.v2_errors = 0.3
        runner.tick()
        clock.advance(5)
    return source


def test_a_rolled_back_rollout_gives_every_chart_with_its_thresholds(tmp_path: Path) -> None:
    run_rollout(tmp_path, ticks=8, fail_at=6)
    inputs = local_report_inputs(tmp_path)
    assert (inputs.rollout, inputs.namespace, inputs.target, inputs.stable) == ("shop", "prod", "v2", ("v1",))
    assert inputs.final_phase == "RolledBack"
    assert inputs.final_reason.startswith("gate failed: error_rate of v2: e-value")
    assert [m.phase for m in inputs.phases][-1] == "RolledBack"
    assert {(t.kind, t.value) for t in inputs.thresholds} == {
        ("max", 2.0), ("stable_margin", 1.0), ("tolerance", 1.2), ("k_over_alpha", 20.0)}  # fmt: skip
    report = build_report(inputs)
    charts = {c.id: c for c in report.charts}
    assert list(charts) == ["chart-weights", "chart-gate-error-rate", "chart-evalues"]
    weights = {s.label: s.values for s in charts["chart-weights"].series}
    assert weights["v2"][0] == 0.0 and 10.0 in weights["v2"] and weights["v2"][-1] == 0.0
    assert weights["v1"][-1] == 100.0
    gate = {s.label: s for s in charts["chart-gate-error-rate"].series}
    assert set(gate) == {"v2", "stable (v1)", "max 2", "stable + 1"}
    assert gate["v2"].values[-2] == pytest.approx(5.8333, abs=1e-3) and gate["stable (v1)"].values[-2] == 1.0
    assert gate["stable + 1"].values[-2] == 2.0  # stable's value + the margin, per point
    assert gate["v2"].values[-1] is None  # the tick after the rollback judged nothing: a gap
    evalues = {s.label: s for s in charts["chart-evalues"].series}
    assert set(evalues) == {"e-value error_rate", "K/alpha error_rate = 20"}
    assert all(v is None or v > 0 for v in evalues["e-value error_rate"].values)  # a log scale has no 0
    assert evalues["e-value error_rate"].values[-2] == pytest.approx(341781.6, rel=1e-3)
    assert [a.kind for a in report.annotations][-1] == "rollback"
    assert report.spans[0].kind == "header"


def test_a_spec_change_writes_a_new_rollout_line_and_the_reader_uses_the_last(tmp_path: Path) -> None:
    run_rollout(tmp_path, ticks=2)
    lines = timeline_path(tmp_path, "shop").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["rollout", "tick", "tick"]
    recorder = TimelineFile(tmp_path)  # a restarted controller writes the rollout line again
    runner = RolloutRunner(RecordingRouter(), FixedMetrics({"v1": VersionMetrics(10, 0), "v2": VersionMetrics(10, 0)}),
                           FileStateStore(tmp_path), clock=FakeClock(2000.0), observers=[recorder])  # fmt: skip
    runner.set_rollouts([ManagedRollout.from_spec(spec(STATISTICAL_YAML.replace("max: 2,", "max: 3,")))])
    runner.tick()
    timeline = read_timeline(timeline_path(tmp_path, "shop"))
    assert timeline.header is not None and {t.value for t in timeline.header.thresholds if t.kind == "max"} == {3.0}
    assert len(timeline.samples) == 3 and timeline.skipped == 0


HOSTILE_LINES = [
    '{"kind": "tick", "at": 1000.0, "phase": "HeaderTest", "weights": {"v1": 100, "v2": 0}',  # torn by a crash
    "not json at all",
    "[1, 2, 3]",
    '{"kind": "tick", "at": NaN}',
    '{"kind": "tick", "at": 1e999}',
    '{"kind": "tick", "at": 1001.0, "weights": {"v1": 101}}',
    '{"kind": "tick", "at": 1002.0, "weights": {"v1": "all"}}',
    '{"kind": "tick", "at": 1003.0, "gates": [{"gate": "error_rate", "value": "1.5"}]}',
    '{"kind": "mystery", "at": 1004.0}',
    '{"kind": "rollout", "rollout": 7}',
    '{"kind": "tick", "at": 1005.0, "reason": "' + "x" * 300_000 + '"}',
    "[" * 100_000,
]


def test_hostile_timeline_lines_are_skipped_and_counted_never_fatal(tmp_path: Path) -> None:
    run_rollout(tmp_path, ticks=3)
    path = timeline_path(tmp_path, "shop")
    with path.open("a") as handle:
        for line in HOSTILE_LINES:
            handle.write(line + "\n")
        handle.write('{"kind": "tick", "at": 1100.0, "gates": [{"gate": "error_rate", "value": NaN, "e_value": '
                     'Infinity, "stable_value": -1.5}], "reason": "</script><script>alert(1)</script>"}\n')  # fmt: skip
    timeline = read_timeline(path)
    assert timeline.skipped == len(HOSTILE_LINES)
    last = timeline.samples[-1]
    assert last.at == 1100.0 and last.gates[0].value is None and last.gates[0].e_value is None
    assert last.gates[0].stable_value == -1.5  # a finite number is drawn as it is (a gap is only for non-numbers)
    inputs = local_report_inputs(tmp_path)
    assert f"shop.timeline.jsonl: {len(HOSTILE_LINES)} unreadable line(s) skipped" in inputs.notes


def test_the_timeline_file_stays_bounded_and_keeps_its_rollout_line(tmp_path: Path) -> None:
    clock = FakeClock()
    source = FixedMetrics({"v1": VersionMetrics(400, 0), "v2": VersionMetrics(100, 0)})
    recorder = TimelineFile(tmp_path, max_bytes=20_000)
    runner = RolloutRunner(RecordingRouter(), source, FileStateStore(tmp_path), clock=clock, observers=[recorder])
    runner.set_rollouts([ManagedRollout.from_spec(spec(STATISTICAL_YAML.replace("10s}", "1h}")))])
    for _ in range(200):
        runner.tick()
        clock.advance(5)
    path = timeline_path(tmp_path, "shop")
    assert MAX_TIMELINE_BYTES == 8 * 1024 * 1024  # the default, as the README says
    assert path.stat().st_size <= 20_000
    timeline = read_timeline(path)
    assert timeline.header is not None and timeline.skipped == 0
    assert timeline.samples[-1].at == clock.now - 5  # the newest tick is always kept
    assert 20 < len(timeline.samples) < 200
    ats = [s.at for s in timeline.samples]
    assert ats == sorted(ats) and all(b - a == 5 for a, b in itertools.pairwise(ats))  # a contiguous tail


def test_a_damaged_state_file_still_reports_from_the_timeline(tmp_path: Path) -> None:
    run_rollout(tmp_path, ticks=3)
    (tmp_path / "shop.state.json").write_text("{broken")
    inputs = local_report_inputs(tmp_path)
    assert inputs.phases == () and inputs.final_phase == inputs.samples[-1].phase
    assert any(note.startswith("state not read: ") and "shop.state.json" in note for note in inputs.notes)


def test_which_rollout_errors_name_the_directory_and_what_is_there(tmp_path: Path) -> None:
    with pytest.raises(ReportSourceError, match="not a directory"):
        local_report_inputs(tmp_path / "absent")
    with pytest.raises(ReportSourceError, match=r"name the rollout with --rollout \(found: none\)"):
        local_report_inputs(tmp_path)
    run_rollout(tmp_path, ticks=1)
    (tmp_path / "cart.timeline.jsonl").write_text("")
    with pytest.raises(ReportSourceError, match=r"found: cart, shop"):
        local_report_inputs(tmp_path)
    with pytest.raises(ReportSourceError, match="not a rollout name"):
        local_report_inputs(tmp_path, "../shop")
    with pytest.raises(ReportSourceError, match="not a rollout name"):
        local_report_inputs(tmp_path, "shop\n")
    with pytest.raises(ReportSourceError, match="has neither a readable state nor timeline"):
        local_report_inputs(tmp_path, "cart")
    assert local_report_inputs(tmp_path, "shop").rollout == "shop"


def test_cli_writes_the_report_and_prints_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_rollout(tmp_path / "state", ticks=6, fail_at=4)
    capsys.readouterr()  # the runner's log lines
    out = tmp_path / "out" / "report.html"
    assert main(["report", "--state-dir", str(tmp_path / "state"), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    page = out.read_text()
    assert 'id="chart-gate-error-rate"' in page and "RolledBack" in page
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert main(["report", "--state-dir", str(tmp_path / "state"), "--rollout", "nope", "-o", str(out)]) == 1
    assert "no rollout 'nope' (found: shop)" in capsys.readouterr().err
    assert main(["report", "-o", str(out)]) == 2
    assert main(["report", "shop", "--state-dir", str(tmp_path), "-o", str(out)]) == 2
    assert main(["report", "shop", "-o", str(out)]) == 2  # cluster mode needs --prometheus
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main(["report", "--state-dir", str(tmp_path / "state"), "-o", str(blocked / "r.html")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_a_fifo_or_device_in_place_of_a_timeline_never_blocks_a_tick_or_the_reader(tmp_path: Path) -> None:
    os.mkfifo(timeline_path(tmp_path, "shop"))
    run_rollout(tmp_path, ticks=3)  # would hang forever on a blocking open of the FIFO
    inputs = local_report_inputs(tmp_path)
    assert "shop.timeline.jsonl: timeline not read: shop.timeline.jsonl: not a regular file" in inputs.notes
    assert inputs.final_phase == "Progressing" and inputs.samples == ()
    timeline_path(tmp_path, "shop").unlink()
    timeline_path(tmp_path, "shop").symlink_to("/dev/zero")
    run_rollout(tmp_path, ticks=1)  # O_NOFOLLOW: the symlink is refused, not followed
    assert "not a regular file" in " ".join(local_report_inputs(tmp_path).notes)
