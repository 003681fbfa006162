"""`ramp report` for a cluster rollout: its state and phase history from the route object (as `ramp status` reads
them), its timeline from Prometheus range queries over the controller's own metrics, and its traffic from Istio's.

The window runs from the first phase change (minus WINDOW_MARGIN) to now, or to the end of a finished rollout
(plus WINDOW_MARGIN), unless `window` (seconds back from now) is given; the step keeps it to about MAX_SAMPLES
points. One query per metric for every version and gate together (`ramp_rollout_weight_percent`,
`ramp_rollout_phase`, `ramp_rollout_step`, `ramp_gate_value`, `ramp_gate_stable_value`, `ramp_gate_evalue`,
`ramp_gate_verdict`, `ramp_gate_threshold`), and two over `istio_requests_total` for the summary (requests and
5xx per version over the window, as the gates count them: by destination_workload_namespace and the reporter).

A query that fails, or answers junk, becomes a note in the report: the report shows what could be read. Only a
service without a route object or without a rollout state raises ReportSourceError (the local source's).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

from kubernetes.client import ApiClient

from controller.analysis.gate_thresholds import THRESHOLD_KINDS, GateThreshold
from controller.analysis.gates import Verdict
from controller.cluster_backend import cluster_backend
from controller.deadline import Deadline
from controller.engine.phases import Phase, RolloutState
from controller.engine.ports import ManagedRollout, spec_digest
from controller.k8s.client import KubeApi
from controller.report.local_source import ReportSourceError
from controller.report.model import MAX_NAME, GateSample, PhaseMark, ReportInputs, TickSample, clip
from controller.report.prometheus_range import Keyed, Points, RangeAnswer, RangeQueryClient, keyed, parse_matrix
from controller.report.samples import RolloutHeader, rollout_header
from controller.spec import RolloutSpec

__all__ = ["ReportSourceError", "cluster_report_inputs", "report_window"]

WINDOW_MARGIN = 30.0  # seconds shown before the first phase change and after a finished rollout's last
MAX_SAMPLES = 1000
MAX_SPAN = 31 * 86400.0  # a state's history older than this is not queried (Prometheus rarely keeps more)
NO_HISTORY_SPAN = 3600.0
MAX_VERSIONS = 64
VERDICTS = {1.0: Verdict.PASS, 0.5: Verdict.HOLD, 0.0: Verdict.NO_DATA, -1.0: Verdict.FAIL}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # Kubernetes object names (DNS subdomains)
_PHASES = {phase.value: phase for phase in Phase}
GATE_METRICS = (("value", "ramp_gate_value"), ("stable_value", "ramp_gate_stable_value"),
                ("e_value", "ramp_gate_evalue"), ("verdict", "ramp_gate_verdict"))  # fmt: skip


def report_window(state: RolloutState, window: float | None, now: float) -> tuple[float, float, float, list[str]]:
    """(start, end, step, notes) of the range queries, at most about MAX_SAMPLES points at a step of >= 1 s.
    The state's times are not trusted: only finite ones in the past count."""
    if not math.isfinite(now) or now <= 0:
        raise ValueError(f"now must be a Unix time, not {now!r}")
    notes: list[str] = []
    times = [c.at for c in state.history if math.isfinite(c.at) and 0 <= c.at <= now]
    observed = state.observed_at if state.observed_at is not None and math.isfinite(state.observed_at) else 0.0
    if window is not None:
        if not math.isfinite(window) or window <= 0:
            raise ReportSourceError(f"the window must be a positive number of seconds, not {window!r}")
        start, end = now - min(window, MAX_SPAN), now
    elif times:
        start = min(times) - WINDOW_MARGIN
        end = min(now, max(*times, observed) + WINDOW_MARGIN) if state.terminal else now
    else:
        start, end = now - NO_HISTORY_SPAN, now
        notes.append(f"the rollout state has no phase history: the last {NO_HISTORY_SPAN / 60:.0f} minutes shown")
    if end - start > MAX_SPAN:
        start = end - MAX_SPAN
        notes.append(f"the rollout's history goes back further than {MAX_SPAN / 86400:.0f} days: not queried")
    start = max(0.0, min(start, end - 1.0))
    step = max(1.0, math.ceil((end - start) / MAX_SAMPLES))
    start = max(0.0, end - math.ceil((end - start) / step) * step)  # `end` on the grid: the last scrape is shown
    return start, end, step, notes


class _Reader:
    """Runs the range queries; each failure, and anything skipped in an answer, becomes a note."""

    def __init__(
        self, prometheus: RangeQueryClient, span: tuple[float, float, float], deadline: Deadline, notes: list[str]
    ) -> None:
        self.prometheus, self.span, self.deadline, self.notes = prometheus, span, deadline, notes
        self.refuse: str | None = None  # why nothing is asked (noted once)
        redact = getattr(prometheus, "redact", None)
        self.redact: Callable[[str], str] = redact if callable(redact) else str

    def answer(self, what: str, promql: str, *, instant: bool = False) -> RangeAnswer | None:
        if self.refuse is not None:
            if self.refuse not in self.notes:
                self.notes.append(self.refuse)
            return None
        if self.deadline.expired:
            self.notes.append(f"{what}: not asked: the {self.deadline.seconds:g}s allowed for the queries ran out")
            return None
        start, end, step = self.span
        try:
            result = self.prometheus.query_range(promql, end if instant else start, end, step, self.deadline)
            answer = parse_matrix(result)
        except Exception as exc:  # PrometheusError (already redacted), or anything a client raised: a note
            reason = str(exc) if type(exc).__module__.startswith("controller.") else f"{type(exc).__name__}: {exc}"
            self.notes.append(clip(f"{what}: not read from Prometheus: {self.redact(reason)}", 500))
            return None
        problems = answer.problems()
        if problems:
            self.notes.append(f"{what}: {problems}")
        return answer

    def keyed(self, what: str, promql: str, key: str | None) -> Keyed:
        answer = self.answer(what, promql)
        found = Keyed() if answer is None else keyed(answer, key)
        if found.unkeyed:
            self.notes.append(f"{what}: {found.unkeyed} series without a {key!r} label, skipped")
        if found.sources > 1:
            self.notes.append(f"{what}: exported by {found.sources} controller replicas; at each moment the values "
                              "of the replica that changed them last are shown")  # fmt: skip
        return found


def _check_name(what: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ReportSourceError(f"{what} {clip(value, 80)!r} is not a Kubernetes name")
    return value


def _state(api: ApiClient | KubeApi, namespace: str, service: str) -> tuple[RolloutState, str, list[str]]:
    backend = cluster_backend(api)
    router = backend.locate(namespace, service)
    if router is None:
        kinds = " or ".join(kind.resource.kind for kind in backend.routers.values())
        raise ReportSourceError(f"no {kinds} {namespace}/{service}: nothing to report")
    routing = backend.read_routing(namespace, service, router)
    where = f"{routing.kind} {namespace}/{service}"
    if routing.state is None:
        why = f": {routing.state_error}" if routing.state_error else " (no ramp.dev/state annotation)"
        raise ReportSourceError(clip(f"{where} holds no rollout state{why}", 600))
    notes = [f"route object: {clip(routing.problem, 300)}"] if routing.problem else []
    return routing.state, where, notes


def _thresholds(answer: RangeAnswer | None) -> list[GateThreshold]:
    """The last value in the window of each gate's threshold of each kind (kinds this version knows)."""
    latest: dict[tuple[str, str], tuple[float, GateThreshold]] = {}
    for series in () if answer is None else answer.series:
        gate, kind, unit = (series.labels.get(k) for k in ("gate", "kind", "unit"))
        known = next((k for k in THRESHOLD_KINDS if k == kind), None)
        numbers = [(at, value) for at, value in series.points.items() if value is not None]
        if not gate or len(gate) > MAX_NAME or known is None or not numbers or len(unit or "") > 16:
            continue
        at, value = numbers[-1]
        if (gate, known) not in latest or at > latest[(gate, known)][0]:
            latest[(gate, known)] = (at, GateThreshold(gate, known, value, unit or ""))
    return [threshold for _, threshold in latest.values()]


def _verdict(value: float | None) -> str:
    verdict = VERDICTS.get(value) if value is not None else None
    return "" if verdict is None else verdict.value


def _overall(verdicts: list[str]) -> str | None:
    """As GateReport.verdict: fail, else no-data, else hold, else pass (None without gates)."""
    for verdict in (Verdict.FAIL, Verdict.NO_DATA, Verdict.HOLD, Verdict.PASS):
        if verdict.value in verdicts:
            return verdict.value
    return None


def _weight(value: float | None) -> int | None:
    return None if value is None or not 0 <= value <= 100 else round(value)


def _step(value: float | None) -> int:
    return -1 if value is None or not 0 <= value <= 10_001 else round(value) - 1


def _gate_sample(gates: Mapping[str, Keyed], gate: str, at: float, limit: float | None) -> GateSample | None:
    """One gate at one moment, from its series (None when none has a point then)."""
    points = {kind: found.values.get(gate, {}) for kind, found in gates.items()}
    if all(at not in kind_points for kind_points in points.values()):
        return None
    value = {kind: kind_points.get(at) for kind, kind_points in points.items()}
    return GateSample(gate=gate, verdict=_verdict(value["verdict"]), value=value["value"],
                      stable_value=value["stable_value"], e_value=value["e_value"], e_limit=limit)  # fmt: skip


def _samples(
    weights: Keyed, phases: Keyed, steps: Keyed, gates: Mapping[str, Keyed], limits: Mapping[str, float],
    headers: Keyed | None = None,
) -> list[TickSample]:
    """One sample at each moment of the range where any series has a point."""
    headers = headers or Keyed()
    series: list[Points] = [*weights.values.values(), *phases.values.values(), *steps.values.values()]
    series += [points for found in gates.values() for points in found.values.values()]
    gate_names = list(dict.fromkeys(name for found in gates.values() for name in found.values))[:64]
    step_points = steps.values.get("", {})
    samples = []
    for at in sorted({at for points in series for at in points}):
        shares = {v: w for v, points in weights.values.items() if (w := _weight(points.get(at))) is not None}
        phase = next((p for p in _PHASES if at in phases.values.get(p, {})), "")
        found = [g for gate in gate_names if (g := _gate_sample(gates, gate, at, limits.get(gate))) is not None]
        header = next((v for v, points in headers.values.items() if points.get(at) == 1.0 and len(v) <= MAX_NAME),
                      None)  # fmt: skip
        samples.append(TickSample(
            at=at, phase=phase, step=_step(step_points.get(at)), weights=dict(list(shares.items())[:MAX_VERSIONS]),
            verdict=_overall([g.verdict for g in found]), gates=found, header_version=header,
            reason=_gates_holding(found),
        ))  # fmt: skip
    return samples


def _gates_holding(gates: list[GateSample]) -> str:
    """What Prometheus tells of a hold: which gates held or had no data (their words are not in any metric)."""
    parts = []
    for verdict, said in ((Verdict.NO_DATA, "no data"), (Verdict.HOLD, "held")):
        names = [g.gate for g in gates if g.verdict == verdict.value]
        if names:
            parts.append(f"{said}: {', '.join(names)}")
    if not parts:
        return ""
    return f"{'; '.join(parts)} (from ramp_gate_verdict; the full reasons are kept in local timelines only)"


def _target(samples: list[TickSample]) -> str:
    """The version whose weight grew most over the window ("" when none grew)."""
    first: dict[str, int] = {}
    grew: dict[str, int] = {}
    for sample in samples:
        for version, weight in sample.weights.items():
            first.setdefault(version, weight)
            grew[version] = max(grew.get(version, 0), weight - first[version])
    best = max(grew.items(), key=lambda item: item[1], default=("", 0))
    return best[0] if best[1] > 0 else ""


def _counts(answer: RangeAnswer | None) -> dict[str, float]:
    """The last value per destination_version of an instant answer (finite, >= 0)."""
    found: dict[str, float] = {}
    for series in () if answer is None else answer.series:
        version = series.labels.get("destination_version")
        values = [v for v in series.points.values() if v is not None and v >= 0]
        if version and len(version) <= MAX_NAME and values:
            found[version] = values[-1]
    return found


def _summary(requests: dict[str, float], errors: dict[str, float], versions: tuple[str, ...]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for version in [*versions, *sorted(set(requests) - set(versions))][:MAX_VERSIONS]:
        if version not in requests:
            continue
        total, bad = requests[version], errors.get(version, 0.0)
        rows.append((f"requests {version}", f"{total:.0f}"))
        share = f" ({100.0 * bad / total:.2f}%)" if total > 0 else ""
        rows.append((f"5xx {version}", f"{bad:.0f}{share}"))
    return rows


def cluster_report_inputs(
    api: ApiClient | KubeApi,
    namespace: str,
    service: str,
    prometheus: RangeQueryClient,
    *,
    window: float | None,
    now: float,
    deadline: Deadline,
    spec: RolloutSpec | None = None,
) -> ReportInputs:
    """The report of the rollout of `namespace/service` (see the module docstring). `spec`, when given (the
    rollout's spec file or RampRollout), names the target, the stable versions and the steps and stands in for
    thresholds Prometheus lacks; without it the target is the version whose weight grew most. ReportSourceError:
    nothing to report (no route object, no rollout state, or a bad namespace, service or window)."""
    _check_name("namespace", namespace)
    _check_name("service", service)
    state, where, notes = _state(api, namespace, service)
    start, end, step, window_notes = report_window(state, window, now)
    notes += window_notes
    reader = _Reader(prometheus, (start, end, step), deadline, notes)
    if not _NAME.fullmatch(state.rollout):
        reader.refuse = f"the state's rollout name {clip(state.rollout, 80)!r} is not a Kubernetes name: not queried"
    sel = f'rollout="{state.rollout}", namespace="{namespace}"'
    weights = reader.keyed("weights", f"ramp_rollout_weight_percent{{{sel}}}", "version")
    phases = reader.keyed("phases", f"ramp_rollout_phase{{{sel}}} == 1", "phase")
    steps = reader.keyed("steps", f"ramp_rollout_step{{{sel}}}", None)
    gates = {kind: reader.keyed(f"gate {kind}s", f"{metric}{{{sel}}}", "gate") for kind, metric in GATE_METRICS}
    thresholds = _thresholds(reader.answer("thresholds", f"ramp_gate_threshold{{{sel}}}"))
    headers = reader.keyed("header routes", f"ramp_rollout_header_route{{{sel}}} == 1", "version")
    header = _spec_header(spec, state, namespace, service, notes)
    if not thresholds and header is not None and header.thresholds:
        thresholds = [t for stored in header.thresholds if (t := stored.threshold()) is not None]
        notes.append("Prometheus has no ramp_gate_threshold for this rollout: thresholds from the spec given")
    elif not thresholds:
        notes.append("Prometheus has no ramp_gate_threshold for this rollout: thresholds not drawn")
    if not weights.values and reader.refuse is None:
        notes.append(f"Prometheus has no ramp_rollout_weight_percent for rollout {state.rollout} in namespace "
                     f"{namespace} in the window: is the controller scraped?")  # fmt: skip
    limits = {t.gate: t.value for t in thresholds if t.kind == "k_over_alpha"}
    samples = _samples(weights, phases, steps, gates, limits, headers)
    seen = [*dict.fromkeys(v for sample in samples for v in sample.weights)]
    if header is not None:
        target, stable, steps_shown = header.target, tuple(header.stable), tuple(header.steps)
    else:
        target, steps_shown = _target(samples), ()
        stable = tuple(v for v, w in (samples[0].weights.items() if samples else ()) if w > 0 and v != target)
    versions = tuple(dict.fromkeys([*(header.versions if header else ()), *seen]))[:MAX_VERSIONS]
    units = {**(header.units if header else {}),
             **{t.gate: t.unit for t in thresholds if t.kind in ("max", "min", "stable_margin")}}  # fmt: skip
    summary = _traffic(reader, namespace, service, spec.analysis.reporter if spec else "destination", versions)
    if state.dropped_history:
        notes.append(f"{state.dropped_history} earlier phase changes are no longer kept in the rollout state")
    display = getattr(prometheus, "display_url", None)
    marks = [PhaseMark(at=c.at, phase=c.phase.value, step=max(-1, min(c.step, 10_000)), reason=c.reason)
             for c in state.history if start <= c.at <= end]  # fmt: skip
    return ReportInputs(
        rollout=clip(state.rollout, MAX_NAME), namespace=namespace, service=service, target=target, stable=stable,
        versions=versions, steps=steps_shown, thresholds=tuple(thresholds), gate_units=units,
        higher_is_better=tuple(header.higher_is_better) if header else (),
        samples=tuple(samples), phases=tuple(marks), final_phase=state.phase.value, final_reason=clip(state.reason),
        summary=tuple(summary), notes=tuple(clip(note, 600) for note in notes),
        source=f"{where}, Prometheus {display if isinstance(display, str) else '(range queries)'}",
    )  # fmt: skip


def _traffic(
    reader: _Reader, namespace: str, service: str, reporter: str, versions: tuple[str, ...]
) -> list[tuple[str, str]]:
    """Summary rows: requests and 5xx per version over the window, from Istio's metrics as the gates count them."""
    start, end, _ = reader.span
    selector = (f'reporter="{reporter}", destination_service_name="{service}", '
                f'destination_workload_namespace="{namespace}"')  # fmt: skip
    over = f"[{max(1, math.ceil(end - start))}s]"
    query = "sum by (destination_version) (increase(istio_requests_total{{{}}}{}))"
    requests = _counts(reader.answer("requests", query.format(selector, over), instant=True))
    errors = _counts(reader.answer("5xx", query.format(selector + ', response_code=~"5.."', over), instant=True))
    return _summary(requests, errors, versions)


def _spec_header(
    spec: RolloutSpec | None, state: RolloutState, namespace: str, service: str, notes: list[str]
) -> RolloutHeader | None:
    """What the spec given says of the rollout (target, versions, steps, thresholds, units), or None."""
    if spec is None:
        return None
    if (spec.namespace, spec.service, spec.rollout_name) != (namespace, service, state.rollout):
        notes.append(f"the spec given is for {spec.namespace}/{spec.service} (rollout {spec.rollout_name}), not this "
                     "rollout: not used")  # fmt: skip
        return None
    if spec_digest(spec) != state.spec_digest:
        notes.append("the spec given is not the one this rollout runs (another digest): its steps may not match")
    return rollout_header(ManagedRollout.from_spec(spec))
