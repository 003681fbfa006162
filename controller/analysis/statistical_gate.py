"""Statistical gates: feed each tick's raw counters into the gate's e-process (see `sequential`).

The e-process state (`GateEvidence`) is carried from tick to tick in the rollout state, outside
its durable part: the cluster store never writes it, so a restarted or failed-over controller starts
the e-process afresh (each run keeps its own false-rollback bound). Local mode keeps it in the
state file and continues it: the first interval after a restart then spans the downtime, which is
still a valid interval.

Counters are differenced per series (a series = one label set: one pod's/Envoy's counter), then summed
per version, so one restarted pod among several is a reset of its own series only (a custom gate's `bad`
and `total` are two counters, each differenced per series on its own, then bad <= total per interval):

- a series seen before: its growth; a counter that went down was reset, so its new value is the growth;
- a series seen for the first time only sets its baseline. Counting its value could count requests from
  before this interval whenever the series existed but was not seen (a missed scrape, a controller restart,
  a series pruned while idle): evidence counted twice breaks the test's bound, while a tick of a new series
  left out only delays it (which series are new does not depend on their outcomes, so the bound holds);
- except a new *outcome* on a known exporter: a request counter first seen now whose exporter (its labels
  without the outcome labels: response code, gRPC status, flags) had a series seen at the previous feed. That
  exporter was scraped for the previous feed and this series was not in that scrape (Prometheus returns every
  series of a scrape or none), so the counter was created after it and all of its value is growth since the
  previous feed: counted from 0. This is how a version's first 5xx (a hard fault) counts at once, not a scrape
  later. A series once seen is never counted from 0 again (`known`), so a series pruned and back is a baseline;
- a series not seen now contributes nothing and keeps its last value for `STALE_TICKS` ticks (it may come
  back: its growth then spans the gap); at most `MAX_SERIES` series are remembered per gate (the
  most recently seen, the new version's first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from pydantic import BaseModel, Field

from controller.analysis.custom_metrics import gate_queries
from controller.analysis.metrics import QUANTILES, MetricsSnapshot, VersionMetrics
from controller.analysis.sequential import (
    Counts,
    counter_delta,
    grid_for,
    mixture_e_value,
    slow_counts,
    snap_boundary,
    update_log_e,
    update_restarts,
)
from controller.spec import Gate, RolloutSpec


class GateEvidence(BaseModel):
    """The e-process of one statistical gate for one rollout run."""

    log_e: list[float] = Field(description="Cumulative log likelihood ratio per alternative of the grid")
    log_restart: list[float] = Field(
        default_factory=list, description="Per alternative, log A_t of the restarted tests (empty: none yet)"
    )
    intervals: int = Field(default=0, ge=0, description="Informative intervals so far (restart weights)")
    counters: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="Per series (`version/<series id>`, or `version` for per-version totals), the last raw "
        "(requests, bad) counters seen",
    )
    seen: dict[str, int] = Field(default_factory=dict, description="Per series, the tick it was last seen")
    tick: int = Field(default=0, description="Ticks that fed counters to this e-process")
    slow_ms: float | None = Field(default=None, description="Latency: the frozen slow threshold (a bucket bound)")
    new: tuple[float, float] = (0.0, 0.0)  # the new version's (requests, bad) counted so far
    crossed: float | None = Field(
        default=None, description="The e-value when it first reached K/alpha: the test stopped there (rejected)"
    )
    known: set[str] = Field(
        default_factory=set, description="Series forgotten after being seen (never counted from 0 again; bounded)"
    )
    stable: tuple[float, float] = (0.0, 0.0)  # the same for the stable versions

    @property
    def e_value(self) -> float:
        return mixture_e_value(self.log_e, self.log_restart, self.intervals)


class Outcome(NamedTuple):
    evidence: GateEvidence
    e_value: float
    limit: float  # K / alpha: the e-value at which the gate rolls back
    rejected: bool
    reason: str
    missing: str | None  # why this tick could not feed the test, if it could not


def statistical_gate_count(spec: RolloutSpec) -> int:
    return sum(1 for gate in spec.gates if gate.statistical)


def fresh_evidence(gate: Gate) -> GateEvidence:
    return GateEvidence(log_e=[0.0] * len(grid_for(gate.tolerance)))


def _slow_threshold(
    gate: Gate,
    spec: RolloutSpec,
    snapshot: MetricsSnapshot,
    versions: Sequence[str],
    stable_window: VersionMetrics | None,
    needed: int,
) -> tuple[float | None, str | None]:
    """The slow threshold snapped to a bucket bound: slow_ms, else max, else stable's quantile now."""
    wanted = gate.slow_ms if gate.slow_ms is not None else gate.max
    if wanted is None:
        stable_names = ",".join(versions[1:]) or "none"
        if stable_window is None or stable_window.requests < needed:
            return None, f"stable ({stable_names}) has fewer than {needed} requests to set the slow threshold"
        wanted = stable_window.quantile(QUANTILES[gate.quantile or "p99"])
        if wanted is None:
            return None, f"no latency histogram for stable ({stable_names}) to set the slow threshold"
    bounds: set[float] = set()
    for version in versions:
        metrics = snapshot.cumulative.get((spec.namespace, spec.service, version))
        if metrics is not None:
            bounds.update(metrics.buckets)
    boundary = snap_boundary(bounds, wanted)
    if boundary is None:
        return None, f"no latency histogram counters for {spec.target} and stable"
    return boundary, None


STALE_TICKS = 12  # a series unseen for this many ticks is forgotten (back later, it is a new baseline)
MAX_SERIES = 4096  # series remembered per gate, the most recently seen kept


def _counts(
    gate: Gate, spec: RolloutSpec, snapshot: MetricsSnapshot, versions: Sequence[str], slow: float | None
) -> dict[str, tuple[str, Counts]]:
    """Per series key, (version, raw counters): from per-series counters when the snapshot has them."""
    found: dict[str, tuple[str, Counts]] = {}
    if gate.metric == "custom":
        return _custom_counts(gate, spec, snapshot, versions)
    for version in dict.fromkeys(versions):
        key = (spec.namespace, spec.service, version)
        per_series = snapshot.cumulative_series.get(key)
        if per_series is None:
            totals = snapshot.cumulative.get(key)
            per_series = {} if totals is None else {"": totals}
        for identity, metrics in per_series.items():
            series = version if not identity else f"{version}/{identity}"
            if gate.metric == "error_rate":
                if not identity or not metrics.buckets:  # a histogram's series carries no request counter
                    found[series] = (version, Counts(metrics.requests, metrics.bad_requests(gate.grpc, gate.codes)))
            elif slow is not None and (counts := slow_counts(metrics.buckets, slow)) is not None:
                found[series] = (version, counts)
    return found


BAD_COUNTER = "b:"  # the series key mark of a custom gate's `bad` counter (its growth counts bad events only)


def _custom_counts(
    gate: Gate, spec: RolloutSpec, snapshot: MetricsSnapshot, versions: Sequence[str]
) -> dict[str, tuple[str, Counts]]:
    """A custom gate's raw `total` and `bad` counters, per series: each is its own counter (own resets)."""
    queries = gate_queries(gate, spec)
    found: dict[str, tuple[str, Counts]] = {}
    for mark, query in (("t:", queries.raw_total), (BAD_COUNTER, queries.raw_bad)):
        per_version = {} if query is None else snapshot.custom_series.get(query.id, {})
        for version in dict.fromkeys(versions):
            for identity, value in per_version.get((spec.namespace, spec.service, version), {}).items():
                found[f"{version}/{mark}{identity}"] = (version, Counts(value, 0.0))
    return found


class SeriesInterval(NamedTuple):
    new: Counts
    stable: Counts
    counters: dict[str, tuple[float, float]]
    seen: dict[str, int]
    known: set[str]


def _exporter(series: str) -> str | None:
    """`version/c<exporter>.<series>` -> `version/c<exporter>` (request counters only; None for others)."""
    version, _, identity = series.partition("/")
    if not identity.startswith("c") or "." not in identity:
        return None
    return f"{version}/{identity.split('.', 1)[0]}"


def series_interval(
    evidence: GateEvidence, current: dict[str, tuple[str, Counts]], new_version: str, tick: int
) -> SeriesInterval:
    """Per-series growth since the last tick (see the module docstring), summed into new vs stable."""
    counters = dict(evidence.counters)
    seen = {k: evidence.seen.get(k, evidence.tick) for k in counters}
    scraped_last = {e for k, t in seen.items() if t == evidence.tick and (e := _exporter(k)) is not None}
    new, stable = [0.0, 0.0], [0.0, 0.0]
    for series, (version, now) in current.items():
        before = counters.get(series)
        if before is None and evidence.tick > 0 and series not in evidence.known and _exporter(series) in scraped_last:
            before = (0.0, 0.0)  # a new outcome on an exporter scraped at the last feed: all of it is growth
        if before is not None:
            delta = counter_delta(Counts(*before), now)
            into = new if version == new_version else stable
            if series.startswith(f"{version}/{BAD_COUNTER}"):  # a custom gate's bad counter
                into[1] += delta.total
            else:
                into[0] += delta.total
                into[1] += delta.bad
        counters[series] = (now.total, now.bad)
        seen[series] = tick
    def priority(series: str) -> tuple[int, bool, str]:  # the most recently seen; then the new version's
        return (-seen[series], series.split("/", 1)[0] != new_version, series)

    kept = sorted((k for k in counters if tick - seen[k] < STALE_TICKS), key=priority)[:MAX_SERIES]
    forgotten = evidence.known | (counters.keys() - set(kept))
    known = forgotten if len(forgotten) <= MAX_SERIES else set(sorted(forgotten)[:MAX_SERIES])
    # bad <= total per interval (a custom gate's two counters may disagree: e.g. a bad series seen first)
    return SeriesInterval(
        Counts(new[0], min(new[1], new[0])), Counts(stable[0], min(stable[1], stable[0])),
        {k: counters[k] for k in kept}, {k: seen[k] for k in kept}, known,
    )  # fmt: skip


def statistical_outcome(
    gate: Gate,
    spec: RolloutSpec,
    snapshot: MetricsSnapshot,
    stable_versions: tuple[str, ...],
    stable_window: VersionMetrics | None,
    previous: GateEvidence | None,
) -> Outcome:
    """One tick of the gate's e-process; `previous` None (or from another grid) starts it afresh."""
    evidence = previous if previous is not None and len(previous.log_e) == len(grid_for(gate.tolerance)) else None
    evidence = evidence or fresh_evidence(gate)
    limit = statistical_gate_count(spec) / gate.alpha
    name, versions = gate.display_name, (spec.target, *stable_versions)
    missing: str | None = None
    slow = evidence.slow_ms
    if gate.metric == "latency" and slow is None:
        needed = gate.min_requests or spec.analysis.min_requests
        slow, missing = _slow_threshold(gate, spec, snapshot, versions, stable_window, needed)
        evidence = evidence.model_copy(update={"slow_ms": slow})
    if missing is None:
        current = _counts(gate, spec, snapshot, versions, slow)
        if not any(version == spec.target for version, _ in current.values()):
            missing = f"no counters for {spec.target} yet"
        tick = evidence.tick + 1
        interval = series_interval(evidence, current, spec.target, tick)
        new = Counts(evidence.new[0] + interval.new.total, evidence.new[1] + interval.new.bad)
        stable = Counts(evidence.stable[0] + interval.stable.total, evidence.stable[1] + interval.stable.bad)
        grid = grid_for(gate.tolerance)
        log_e = update_log_e(evidence.log_e, interval.new, interval.stable, gate.tolerance, grid)
        restarts = evidence.log_restart if len(evidence.log_restart) == len(grid) else []
        log_restart, intervals = update_restarts(
            restarts, evidence.intervals, interval.new, interval.stable, gate.tolerance, grid
        )
        evidence = evidence.model_copy(
            update={
                "log_e": log_e,
                "log_restart": log_restart,
                "intervals": intervals,
                "counters": interval.counters,
                "seen": interval.seen,
                "known": interval.known,
                "tick": tick,
                "new": (new.total, new.bad),
                "stable": (stable.total, stable.bad),
            }
        )
    value = evidence.e_value
    if value >= limit and evidence.crossed is None:  # the test stops at its first crossing: rejected from now on
        evidence = evidence.model_copy(update={"crossed": value})
    if evidence.crossed is None:
        slow_note = "" if evidence.slow_ms is None else f" (slow: > {evidence.slow_ms:g}ms)"
        return Outcome(evidence, value, limit, False, f"{name}: e-value {value:.3g} < {limit:g}{slow_note}", missing)
    return Outcome(evidence, value, limit, True, crossed_reason(gate, spec, stable_versions, evidence), missing)


def crossed(gate: Gate, evidence: GateEvidence | None) -> bool:
    """This gate's e-process (of this grid) already reached K/alpha: rejected for the rest of the run."""
    if evidence is None or evidence.crossed is None:
        return False
    return len(evidence.log_e) == len(grid_for(gate.tolerance))


def crossed_reason(gate: Gate, spec: RolloutSpec, stable_versions: tuple[str, ...], evidence: GateEvidence) -> str:
    limit = statistical_gate_count(spec) / gate.alpha
    slow = "?" if evidence.slow_ms is None else f"{evidence.slow_ms:g}"
    what = {"error_rate": "errors", "custom": "bad"}.get(gate.metric) or f"slower than {slow}ms"
    new_total, new_bad = evidence.new
    stable_total, stable_bad = evidence.stable
    return (
        f"{gate.display_name} of {spec.target}: e-value {evidence.crossed or 0.0:.4g} >= {limit:g} = K/alpha "
        f"({statistical_gate_count(spec)}/{gate.alpha:g}); {what}: {new_bad:.0f} of {new_total:.0f} requests "
        f"vs stable ({','.join(stable_versions) or 'none'}) {stable_bad:.0f} of {stable_total:.0f}, "
        f"tolerance {gate.tolerance:g}x"
    )
