"""ReportInputs -> Report: the charts (series on one time axis each), the annotations and the tables. Pure.

Charts, each with an element id the page and its tests find:
- `chart-weights`: each version's traffic percentage, stepped; the header-only test is shaded.
- `chart-gate-<gate>`: the new version's value and stable's, with the gate's lines: max, min, stable + margin.
- `chart-evalues` (only with statistical gates): each statistical gate's e-value against its K/alpha, log scale.
Annotations: every phase change (a marked line with its reason) and the spans where the gates held (hold or no
data), with the reason. Non-finite values are gaps, never points.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from controller.analysis.gate_thresholds import GateThreshold
from controller.report.model import ReportInputs, TickSample

MAX_POINTS = 4000  # per chart: more samples are thinned evenly (phase changes are annotations, never lost)
SeriesKind = str  # "version" | "stable" | "threshold" | "evalue" | "limit"


@dataclass(frozen=True)
class Series:
    label: str
    kind: SeriesKind
    values: tuple[float | None, ...]
    group: str = ""  # the version or gate it belongs to (colours)


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    unit: str
    x: tuple[float, ...]
    series: tuple[Series, ...]
    log_scale: bool = False
    stepped: bool = False


@dataclass(frozen=True)
class Annotation:
    at: float
    kind: str  # phase | rollback | promoted
    label: str
    reason: str


@dataclass(frozen=True)
class Span:
    start: float
    end: float
    kind: str  # header | hold
    reason: str


@dataclass(frozen=True)
class Report:
    inputs: ReportInputs
    charts: tuple[Chart, ...]
    annotations: tuple[Annotation, ...]
    spans: tuple[Span, ...]
    notes: tuple[str, ...] = field(default=())


def element_id(name: str) -> str:
    """A gate's name as part of an element id (DNS labels already fit; anything else is made to)."""
    return re.sub(r"[^a-z0-9-]", "-", name.lower())[:80] or "gate"


def thin(samples: Sequence[TickSample], limit: int = MAX_POINTS) -> list[TickSample]:
    if len(samples) <= limit:
        return list(samples)
    stride = len(samples) / limit
    picked = [samples[int(i * stride)] for i in range(limit - 1)]
    return [*picked, samples[-1]]


def _versions(inputs: ReportInputs, samples: Sequence[TickSample]) -> list[str]:
    seen = list(inputs.versions)
    for sample in samples:
        for version in sample.weights:
            if version not in seen and len(seen) < 64:
                seen.append(version)
    return seen


def weights_chart(inputs: ReportInputs, samples: Sequence[TickSample]) -> Chart:
    x = tuple(s.at for s in samples)
    series = tuple(
        Series(label=version, kind="version", group=version,
               values=tuple(float(s.weights[version]) if version in s.weights else None for s in samples))
        for version in _versions(inputs, samples)
    )  # fmt: skip
    return Chart(id="chart-weights", title="Traffic per version", unit="%", x=x, series=series, stepped=True)


def _gate_names(inputs: ReportInputs, samples: Sequence[TickSample]) -> list[str]:
    names = [t.gate for t in inputs.thresholds]
    for sample in samples:
        names.extend(g.gate for g in sample.gates)
    return list(dict.fromkeys(names))[:64]


def _threshold(inputs: ReportInputs, gate: str, kind: str) -> GateThreshold | None:
    return next((t for t in inputs.thresholds if t.gate == gate and t.kind == kind), None)


def gate_chart(inputs: ReportInputs, samples: Sequence[TickSample], gate: str) -> Chart:
    found = [{g.gate: g for g in s.gates}.get(gate) for s in samples]
    stable = "+".join(inputs.stable) or "stable"
    series = [
        Series(inputs.target, "version", tuple(g.value if g else None for g in found), group=inputs.target),
        Series(f"stable ({stable})", "stable", tuple(g.stable_value if g else None for g in found), group=stable),
    ]
    for kind, label in (("max", "max"), ("min", "min")):
        limit = _threshold(inputs, gate, kind)
        if limit is not None:
            series.append(Series(f"{label} {limit.value:g}", "threshold", tuple(limit.value for _ in samples)))
    margin = _threshold(inputs, gate, "stable_margin")
    if margin is not None:
        sign = -1.0 if gate in inputs.higher_is_better else 1.0
        series.append(Series(
            f"stable {'-' if sign < 0 else '+'} {margin.value:g}", "threshold",
            tuple(None if g is None or g.stable_value is None else g.stable_value + sign * margin.value
                  for g in found),
        ))  # fmt: skip
    unit = inputs.gate_units.get(gate, "")
    title = f"{gate}: {inputs.target} against stable ({stable})" + (f", {unit}" if unit else "")
    return Chart(id=f"chart-gate-{element_id(gate)}", title=title, unit=unit, x=tuple(s.at for s in samples),
                 series=tuple(series))  # fmt: skip


def _positive(value: float | None) -> float | None:
    return value if value is not None and value > 0 else None  # a log scale has no place for 0


def evalue_chart(inputs: ReportInputs, samples: Sequence[TickSample]) -> Chart | None:
    statistical = [t.gate for t in inputs.thresholds if t.kind == "k_over_alpha"]
    for sample in samples:
        statistical.extend(g.gate for g in sample.gates if g.e_value is not None)
    gates = list(dict.fromkeys(statistical))[:32]
    if not gates:
        return None
    series: list[Series] = []
    for gate in gates:
        found = [{g.gate: g for g in s.gates}.get(gate) for s in samples]
        series.append(Series(f"e-value {gate}", "evalue", tuple(_positive(g.e_value) if g else None for g in found),
                             group=gate))  # fmt: skip
        limit = _threshold(inputs, gate, "k_over_alpha")
        values = tuple((limit.value if limit else (g.e_limit if g else None)) for g in found)
        if any(v is not None for v in values):
            shown = limit.value if limit else next(v for v in values if v is not None)
            bound = tuple(_positive(v) for v in values)
            series.append(Series(f"K/alpha {gate} = {shown:g}", "limit", bound, group=gate))
    return Chart(id="chart-evalues", title="Statistical gates: e-value against K/alpha (log scale)", unit="e-value",
                 x=tuple(s.at for s in samples), series=tuple(series), log_scale=True)  # fmt: skip


def phase_annotations(inputs: ReportInputs) -> list[Annotation]:
    found = []
    for mark in inputs.phases:
        kind = {"RolledBack": "rollback", "Promoted": "promoted", "Failed": "rollback"}.get(mark.phase, "phase")
        label = mark.phase if mark.step < 0 or kind == "promoted" else f"{mark.phase} · step {mark.step + 1}"
        found.append(Annotation(at=mark.at, kind=kind, label=label, reason=mark.reason))
    return sorted(found, key=lambda a: a.at)


def spans(samples: Sequence[TickSample]) -> list[Span]:
    """Header-only test and holds (a gate held or had no data): consecutive samples, with the first reason."""
    found: list[Span] = []
    open_span: dict[str, tuple[float, str]] = {}
    for sample in samples:
        kinds = {
            "header": sample.header_version is not None and not any(
                w > 0 for v, w in sample.weights.items() if v == sample.header_version),
            "hold": sample.verdict in ("hold", "no-data"),
        }
        for kind, active in kinds.items():
            if active and kind not in open_span:
                why = sample.reason if kind == "hold" else f"header only: {sample.header_version}"
                open_span[kind] = (sample.at, why)
            elif not active and kind in open_span:
                start, reason = open_span.pop(kind)
                found.append(Span(start, sample.at, kind, reason))
    if samples:
        for kind, (start, reason) in open_span.items():
            found.append(Span(start, samples[-1].at, kind, reason))
    return sorted(found, key=lambda s: s.start)[:500]


def build_report(inputs: ReportInputs) -> Report:
    samples = thin(inputs.samples)
    charts: list[Chart] = [weights_chart(inputs, samples)]
    used = {"chart-weights", "chart-evalues"}
    for gate in _gate_names(inputs, samples):
        chart = gate_chart(inputs, samples, gate)
        unique, n = chart.id, 1
        while unique in used:  # two gate names that read alike as an element id ("a.b", "a-b") stay apart
            n += 1
            unique = f"{chart.id}-{n}"
        used.add(unique)
        charts.append(replace(chart, id=unique))
    evalues = evalue_chart(inputs, samples)
    if evalues is not None:
        charts.append(evalues)
    notes = list(inputs.notes)
    if len(samples) < len(inputs.samples):
        notes.append(f"{len(inputs.samples)} samples thinned to {len(samples)} for drawing")
    if not inputs.samples:
        notes.append("no samples: the rollout was never observed in this window")
    return Report(inputs=inputs, charts=tuple(charts), annotations=tuple(phase_annotations(inputs)),
                  spans=tuple(spans(samples)), notes=tuple(notes))  # fmt: skip
