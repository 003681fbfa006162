"""The controller's own Prometheus metrics, fed by the runner (an observer of every tick).

Per rollout and version: weight; per rollout: phase, step, gate values, verdicts and e-values, and (in
`controller_gate_metrics`) the gates' thresholds from the spec, stable's gate values and the rollout's service;
rollbacks by reason and transitions by kind (from `TickEvent.transitions`); tick duration, abandoned, skipped and
failed ticks, the last loop iteration; requests/errors towards Prometheus and Kubernetes; notifications by notifier
and outcome (read from the delivery queue at scrape time).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.analysis.gates import Verdict
from controller.controller_gate_metrics import GateMetrics
from controller.engine.phases import Command, Phase
from controller.engine.ports import TRANSITION_KINDS
from controller.engine.runner import TickEvent

TICK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, float("inf"))
SKIP_REASONS = ("standby", "previous_tick_running")
COMMANDS = frozenset(c.value for c in Command)
VERDICT_VALUE = {Verdict.PASS: 1.0, Verdict.HOLD: 0.5, Verdict.NO_DATA: 0.0, Verdict.FAIL: -1.0}


def rollback_cause(reason: str) -> str:
    """A small, bounded label value for why a rollout rolled back."""
    if reason.startswith("gate failed: "):
        return "gate:" + reason.removeprefix("gate failed: ").split(" ", 1)[0]
    if reason.startswith("no data for"):
        return "missing_data"
    if reason.startswith("aborted"):
        return "aborted"
    return "other"


class _CallCounters(Collector):
    """Exports request/error counts kept by the I/O edges (read at scrape time)."""

    def __init__(self, sources: Mapping[str, Callable[[], tuple[int, int]]]) -> None:
        self.sources = dict(sources)

    def collect(self) -> Iterator[CounterMetricFamily]:
        requests = CounterMetricFamily("ramp_backend_requests", "Requests sent to a backend", labels=["backend"])
        errors = CounterMetricFamily("ramp_backend_errors", "Failed requests to a backend", labels=["backend"])
        for backend, read in self.sources.items():
            sent, failed = read()
            requests.add_metric([backend], sent)
            errors.add_metric([backend], failed)
        yield requests
        yield errors


NOTIFIERS = ("slack", "teams", "webhook")
NOTIFICATION_OUTCOMES = ("sent", "failed", "dropped")


class _NotificationCounters(Collector):
    """`ramp_notifications_total{notifier,outcome}` (sent, failed, dropped), retries, and the queue's depth, read
    from the delivery queue's own counts at scrape time."""

    def __init__(self, stats: Callable[[], Mapping[tuple[str, str], int]], queued: Callable[[], int]) -> None:
        self.stats = stats
        self.queued = queued

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counts = self.stats()
        notifiers = sorted({*NOTIFIERS, *(notifier for notifier, _ in counts)})
        total = CounterMetricFamily(
            "ramp_notifications", "Notifications by notifier and outcome (sent, failed, dropped)",
            labels=["notifier", "outcome"],
        )  # fmt: skip
        retries = CounterMetricFamily("ramp_notification_retries", "Notification attempts retried", labels=["notifier"])
        for notifier in notifiers:
            for outcome in NOTIFICATION_OUTCOMES:
                total.add_metric([notifier, outcome], counts.get((notifier, outcome), 0))
            retries.add_metric([notifier], counts.get((notifier, "retried"), 0))
        yield total
        yield retries
        yield GaugeMetricFamily("ramp_notifications_queued", "Notifications waiting to be sent", value=self.queued())


class ControllerMetrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        backends: Mapping[str, Callable[[], tuple[int, int]]] | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self._seen: set[tuple[str, str]] = set()
        labels = ["rollout", "namespace"]
        self.header_route = Gauge(
            "ramp_rollout_header_route",
            "1 while requests with the rollout's header are routed to this version (the header-only test), else 0",
            [*labels, "version"],
            registry=self.registry,
        )
        self.weight = Gauge(
            "ramp_rollout_weight_percent",
            "Traffic percentage per version",
            [*labels, "version"],
            registry=self.registry,
        )
        self.phase = Gauge(
            "ramp_rollout_phase", "1 for the rollout's current phase", [*labels, "phase"], registry=self.registry
        )
        self.step = Gauge(
            "ramp_rollout_step", "Current step (1-based; 0 before the first)", labels, registry=self.registry
        )
        self.gate_value = Gauge(
            "ramp_gate_value",
            "Last value of a gate (percent or ms); also below min_requests, while its verdict is 0 (not judged)",
            [*labels, "gate"],
            registry=self.registry,
        )
        self.gate_verdict = Gauge(
            "ramp_gate_verdict",
            "Last verdict: 1 pass, 0.5 hold, 0 no data, -1 fail",
            [*labels, "gate"],
            registry=self.registry,
        )
        self.gate_evalue = Gauge(
            "ramp_gate_evalue",
            "Statistical gates: the e-value against stable (rolls back at K/alpha)",
            [*labels, "gate"],
            registry=self.registry,
        )
        self.gates = GateMetrics(self.registry, per_gate=(self.gate_value, self.gate_verdict, self.gate_evalue))
        self.rollbacks = Counter("ramp_rollbacks", "Rollbacks by cause", [*labels, "cause"], registry=self.registry)
        self.tick_seconds = Histogram(
            "ramp_tick_duration_seconds",
            "Duration of one controller tick (including abandoned ticks that finished late)",
            buckets=TICK_BUCKETS,
            registry=self.registry,
        )
        self.ticks_skipped = Counter(
            "ramp_ticks_skipped",
            "Ticks not run: standby (not the leader), or previous_tick_running (an abandoned tick still runs)",
            ["reason"],
            registry=self.registry,
        )
        self.ticks_abandoned = Counter(
            "ramp_ticks_abandoned",
            "Ticks that overran their deadline (the loop stopped waiting)",
            registry=self.registry,
        )
        self.tick_errors = Counter("ramp_tick_errors", "Ticks that raised an error", registry=self.registry)
        self.last_tick = Gauge(
            "ramp_last_loop_iteration_timestamp_seconds",
            "Unix time the controller loop last completed an iteration (a tick or a standby pass)",
            registry=self.registry,
        )
        self.drift = Counter(
            "ramp_routing_drift",
            "Ticks where the data plane served other routing than the rollout's state (then repaired)",
            labels,
            registry=self.registry,
        )
        self.damaged = Counter(
            "ramp_state_damaged",
            "Damaged stored states (unreadable, or not fitting the plan): failed safe to the baseline",
            labels,
            registry=self.registry,
        )
        self.unconfirmed = Gauge(
            "ramp_routing_unconfirmed",
            "1 while the data plane has not confirmed the rollout's routing (the step's clock stands still)",
            labels,
            registry=self.registry,
        )
        self.state_save_errors = Counter(
            "ramp_state_save_errors", "Ticks whose state could not be saved (nothing new applied)", labels,
            registry=self.registry,
        )  # fmt: skip
        self.commands = Counter(
            "ramp_commands",
            "People's commands by outcome (applied or refused)",
            [*labels, "command", "outcome"],
            registry=self.registry,
        )
        self.transitions = Counter(
            "ramp_rollout_transitions", "What happened to rollouts (started, step, rolled_back, ...), by kind",
            [*labels, "kind"], registry=self.registry,
        )  # fmt: skip
        for reason in SKIP_REASONS:  # start at 0, so increase() sees the first skip
            self.ticks_skipped.labels(reason=reason)
        if backends:
            self.registry.register(_CallCounters(backends))
        self._notifications: _NotificationCounters | None = None

    def watch_notifications(
        self, stats: Callable[[], Mapping[tuple[str, str], int]], queued: Callable[[], int]
    ) -> None:
        """Export the notification queue's counts (a NotificationDispatcher's `stats` and `queued`)."""
        if self._notifications is None:
            self._notifications = _NotificationCounters(stats, queued)
            self.registry.register(self._notifications)

    def observe(self, event: TickEvent) -> None:
        spec = event.rollout.spec
        key = {"rollout": event.rollout.name, "namespace": spec.namespace}
        if (event.rollout.name, spec.namespace) not in self._seen:
            # Start every cause at 0, so increase() also sees a rollout's first rollback.
            self._seen.add((event.rollout.name, spec.namespace))
            for cause in ("missing_data", "aborted", "other", *(f"gate:{g.display_name}" for g in spec.gates)):
                self.rollbacks.labels(**key, cause=cause)
            for counter in (self.drift, self.damaged, self.state_save_errors):
                counter.labels(**key)
            for kind in TRANSITION_KINDS:
                self.transitions.labels(**key, kind=kind)
        state = event.decision.state
        for version, weight in event.decision.routing.weights:
            self.weight.labels(**key, version=version).set(weight)
        headed = {route.version for route in event.decision.routing.header_routes}
        for version in event.decision.routing.versions:
            self.header_route.labels(**key, version=version).set(1.0 if version in headed else 0.0)
        for phase in Phase:
            self.phase.labels(**key, phase=phase.value).set(1.0 if phase == state.phase else 0.0)
        self.step.labels(**key).set(state.step + 1)
        self.gates.observe_spec(event.rollout)  # before the results: clears the gates a new spec dropped
        if event.report is not None:
            for result in event.report.results:
                if result.value is not None and math.isfinite(result.value):  # never NaN/Inf (kept: the last)
                    self.gate_value.labels(**key, gate=result.gate).set(result.value)
                self.gate_verdict.labels(**key, gate=result.gate).set(VERDICT_VALUE[result.verdict])
                if result.e_value is not None and math.isfinite(result.e_value):
                    self.gate_evalue.labels(**key, gate=result.gate).set(result.e_value)
            self.gates.observe_results(event.rollout, event.report.results)
        for transition in event.transitions:
            self.transitions.labels(**key, kind=transition.kind).inc()
            if transition.kind == "rolled_back":
                self.rollbacks.labels(**key, cause=rollback_cause(transition.reason)).inc()
        self._observe_safety(event, key)

    def _observe_safety(self, event: TickEvent, key: dict[str, str]) -> None:
        state = event.decision.state
        if event.drift is not None:
            self.drift.labels(**key).inc()
        if event.damaged is not None:
            self.damaged.labels(**key).inc()
        if event.store_error is not None:
            self.state_save_errors.labels(**key).inc()
        self.unconfirmed.labels(**key).set(0.0 if state.unconfirmed is None else 1.0)
        outcome = state.last_command
        if outcome is not None and outcome.at == event.at:  # decided in this tick
            command = outcome.command if outcome.command in COMMANDS else "unreadable"
            self.commands.labels(**key, command=command, outcome="applied" if outcome.applied else "refused").inc()

    def rollouts_removed(self, removed: Sequence[tuple[str, str]]) -> None:
        """Rollouts that left the runner (spec deleted or renamed, shard given up): every series of theirs goes,
        so no dashboard shows a rollout that no longer exists (or that another replica now exports)."""
        for name, namespace in removed:
            self._seen.discard((name, namespace))
            self.gates.forget(name, namespace)
            for metric in self._per_rollout():
                remove_series(metric, rollout=name, namespace=namespace)

    def _per_rollout(self) -> tuple[Gauge | Counter, ...]:
        return (
            self.header_route, self.weight, self.phase, self.step, self.gate_value, self.gate_verdict,
            self.gate_evalue, self.rollbacks, self.drift, self.damaged, self.unconfirmed, self.state_save_errors,
            self.commands, self.transitions, self.gates.threshold, self.gates.stable_value, self.gates.info,
        )  # fmt: skip

    __call__ = observe


def remove_series(metric: Gauge | Counter, **match: str) -> None:
    """Remove every child series of a labelled metric whose labels include `match`."""
    names = metric._labelnames  # its children are listed only by collecting it, their labels by name
    for family in metric.collect():
        found = {
            tuple(sample.labels[n] for n in names)
            for sample in family.samples
            if all(sample.labels.get(k) == v for k, v in match.items())
        }
        for labels in found:
            metric.remove(*labels)
