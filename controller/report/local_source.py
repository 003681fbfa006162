"""A local rollout's report inputs: its state file (phase history, outcome) and its timeline file (every tick),
both in the state directory of `ramp run` / `ramp demo`.

A damaged state file still gives a report from the timeline (with a note); a damaged timeline line is skipped and
counted; no timeline and no state is an error naming the directory and the rollouts it has.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from controller.report.model import PhaseMark, ReportInputs, clip
from controller.state.file_store import FileStateStore, StateStoreError
from controller.state.timeline_file import TIMELINE_SUFFIX, Timeline, read_timeline, timeline_path

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ReportSourceError(ValueError):
    """The report cannot be made from this source (the message says why and what is there)."""


def local_rollouts(state_dir: Path) -> list[str]:
    names = {p.name.removesuffix(TIMELINE_SUFFIX) for p in state_dir.glob(f"*{TIMELINE_SUFFIX}")}
    names |= {p.name.removesuffix(".state.json") for p in state_dir.glob("*.state.json")}
    return sorted(n for n in names if _NAME.fullmatch(n))


def pick_rollout(state_dir: Path, rollout: str | None) -> str:
    if not state_dir.is_dir():
        raise ReportSourceError(f"{state_dir}: not a directory")
    found = local_rollouts(state_dir)
    if rollout is not None:
        if not _NAME.fullmatch(rollout):
            raise ReportSourceError(f"--rollout {rollout!r}: not a rollout name (a DNS label)")
        if rollout not in found:
            raise ReportSourceError(f"{state_dir}: no rollout {rollout!r} (found: {', '.join(found) or 'none'})")
        return rollout
    if len(found) != 1:
        listed = ", ".join(found) or "none"
        raise ReportSourceError(f"{state_dir}: name the rollout with --rollout (found: {listed})")
    return found[0]


def local_report_inputs(state_dir: Path, rollout: str | None = None, summary: Sequence[tuple[str, str]] = (),
                        source: str | None = None) -> ReportInputs:  # fmt: skip
    name = pick_rollout(state_dir, rollout)
    notes: list[str] = []
    timeline = _timeline(state_dir, name, notes)
    phases: list[PhaseMark] = []
    final_phase = final_reason = ""
    try:
        state = FileStateStore(state_dir).load(name)
    except StateStoreError as exc:
        state = None
        notes.append(f"state not read: {clip(str(exc), 500)}")
    if state is not None:
        phases = [PhaseMark(at=c.at, phase=c.phase.value, step=c.step, reason=c.reason)
                  for c in state.history if c.at >= 0]  # fmt: skip
        if state.dropped_history:
            notes.append(f"the state dropped its {state.dropped_history} oldest phase changes (bounded history)")
        final_phase, final_reason = state.phase.value, clip(state.reason)
    elif timeline.samples:
        final_phase, final_reason = timeline.samples[-1].phase, timeline.samples[-1].reason
    if state is None and not timeline.samples:
        raise ReportSourceError(f"{state_dir}: rollout {name!r} has neither a readable state nor timeline")
    header = timeline.header
    return ReportInputs(
        rollout=name,
        namespace=header.namespace if header else "",
        service=header.service if header else "",
        target=header.target if header else "",
        stable=tuple(header.stable) if header else (),
        versions=tuple(header.versions) if header else (),
        steps=tuple(header.steps) if header else (),
        thresholds=tuple(t for stored in (header.thresholds if header else []) if (t := stored.threshold())),
        gate_units=dict(header.units) if header else {},
        higher_is_better=tuple(header.higher_is_better) if header else (),
        samples=tuple(timeline.samples),
        phases=tuple(phases),
        final_phase=final_phase,
        final_reason=final_reason,
        summary=tuple(summary),
        source=source or f"local state directory {state_dir}",
        notes=tuple(notes),
    )


def _timeline(state_dir: Path, name: str, notes: list[str]) -> Timeline:
    path = timeline_path(state_dir, name)
    try:
        timeline = read_timeline(path)
    except FileNotFoundError:
        notes.append(f"{path.name}: no timeline (the rollout ran without one): only the phase changes are shown")
        return Timeline(header=None, samples=[], skipped=0, truncated=False)
    except OSError as exc:
        notes.append(f"{path.name}: timeline not read: {exc.strerror or exc}")
        return Timeline(header=None, samples=[], skipped=0, truncated=False)
    if timeline.skipped:
        notes.append(f"{path.name}: {timeline.skipped} unreadable line(s) skipped")
    if timeline.truncated:
        notes.append(f"{path.name}: larger than the reader's limit: only its newest part is shown")
    if timeline.header is None and timeline.samples:
        notes.append(f"{path.name}: no readable rollout line: thresholds are not drawn")
    return timeline
