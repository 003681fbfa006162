"""What the demo shows: live progress lines per tick and the closing summary."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from controller.engine.phases import Phase
from controller.engine.runner import TickEvent
from controller.local.loadgen import Response
from controller.report.local_source import local_report_inputs
from controller.report.write import write_report

MARKS = {"pass": "ok", "fail": "FAIL", "no-data": "no data"}


def _gate_text(event: TickEvent) -> str:
    if event.report is None:
        return "gates: -"
    parts = []
    for result in event.report.results:
        value = "n/a" if result.value is None else f"{result.value:.2f}"
        unit = "%" if result.gate.startswith("error") else "ms"
        parts.append(f"{result.gate}={value}{unit if result.value is not None else ''} {MARKS[result.verdict]}")
    return " ".join(parts)


@dataclass
class DemoRecorder:
    """Observer for the runner: prints progress and remembers what the summary needs."""

    out: TextIO
    started_at: float
    # When the rollback's routing was applied and confirmed: the observer is told after that, so its clock (not
    # the tick's start, which precedes the Prometheus query and the apply) is when traffic was back.
    rollback_applied_at: float | None = None
    clock: Callable[[], float] = time.time
    events: list[TickEvent] = field(default_factory=list)
    _last_key: tuple[object, ...] = ()
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: TickEvent) -> None:
        with self._lock:
            self.events.append(event)
            if (
                event.decision.phase == Phase.ROLLED_BACK
                and self.rollback_applied_at is None
                and event.apply_error is None
            ):
                self.rollback_applied_at = self.clock()
            state = event.decision.state
            line = (
                f"[{event.at - self.started_at:6.1f}s] {state.phase.value:<11} "
                f"| {event.decision.routing.describe():<40} | {_gate_text(event)}"
            )
            print(line, file=self.out, flush=True)
            verdict = None if event.report is None else event.report.verdict
            key = (state.phase, state.step, verdict)
            if key != self._last_key or event.apply_error:
                self._last_key = key
                print(f"{'':10}-> {state.reason}" + (f" (routing: {event.apply_error})" if event.apply_error else ""),
                      file=self.out, flush=True)


def first_failure_at(responses: list[Response], version: str) -> float | None:
    failures = [r.timestamp for r in responses if r.version == version and r.status >= 500]
    return min(failures) if failures else None


def build_summary(
    *,
    scenario: str,
    rollout: str,
    target: str,
    recorder: DemoRecorder,
    responses: list[Response],
    final_split: Counter[str],
    finished_at: float,
) -> dict[str, Any]:
    final_state = recorder.events[-1].decision.state if recorder.events else None
    outcome = final_state.phase.value if final_state is not None else "NotStarted"
    history = final_state.history if final_state is not None else []
    fault_at = first_failure_at(responses, target)
    fault_to_rollback = None
    if fault_at is not None and recorder.rollback_applied_at is not None:
        fault_to_rollback = round(recorder.rollback_applied_at - fault_at, 2)
    statuses = Counter(r.status for r in responses)
    return {
        "scenario": scenario,
        "rollout": rollout,
        "target": target,
        "outcome": outcome,
        "phases": [
            {
                "phase": change.phase.value,
                "step": change.step,
                "at_seconds": round(change.at - recorder.started_at, 2),
                "reason": change.reason,
            }
            for change in history
        ],
        "rollback_reason": final_state.reason if outcome == Phase.ROLLED_BACK.value and final_state else None,
        "fault_to_rollback_seconds": fault_to_rollback,
        "requests": len(responses),
        "failed_requests": sum(n for status, n in statuses.items() if status >= 500 or status == 0),
        "final_traffic": dict(sorted(final_split.items())),
        "duration_seconds": round(finished_at - recorder.started_at, 1),
    }


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    print("", file=out)
    print(f"== Rollout {summary['rollout']} -> {summary['target']}: {summary['outcome']} "
          f"in {summary['duration_seconds']}s ==", file=out)
    for phase in summary["phases"]:
        print(f"  {phase['at_seconds']:7.1f}s  {phase['phase']:<11} {phase['reason']}", file=out)
    if summary["rollback_reason"]:
        print(f"  rollback reason: {summary['rollback_reason']}", file=out)
    if summary["fault_to_rollback_seconds"] is not None:
        print(f"  first failed user request -> traffic back on stable: "
              f"{summary['fault_to_rollback_seconds']}s", file=out)
    print(f"  user requests: {summary['requests']}, failed: {summary['failed_requests']}", file=out)
    split = ", ".join(f"{v}: {n}" for v, n in summary["final_traffic"].items())
    print(f"  traffic after the rollout (sampled requests): {split}", file=out)


def summary_table(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The demo's closing summary as the rows of the report's summary table."""
    split = ", ".join(f"{v}: {n}" for v, n in summary["final_traffic"].items())
    rows = [
        ("scenario", str(summary["scenario"])),
        ("duration", f"{summary['duration_seconds']} s"),
        ("user requests", str(summary["requests"])),
        ("failed user requests", str(summary["failed_requests"])),
        ("traffic after the rollout (sampled requests)", split or "-"),
    ]
    if summary["fault_to_rollback_seconds"] is not None:
        seconds = summary["fault_to_rollback_seconds"]
        rows.append(("first failed user request -> traffic back on stable", f"{seconds} s"))
    return rows


def write_demo_report(state_dir: Path, rollout: str, summary: dict[str, Any], path: Path) -> Path:
    """`ramp report --state-dir` of the demo's rollout, with the demo's summary table."""
    inputs = local_report_inputs(state_dir, rollout, summary=summary_table(summary),
                                 source=f"ramp demo --scenario {summary['scenario']} (local Envoy + Prometheus)")
    return write_report(inputs, path)
