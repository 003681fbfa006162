"""Sharded election: one coordination.k8s.io Lease per shard, so several replicas split the rollouts.

`ramp controller --shards S` (S > 1) hashes each rollout's namespace/service to a shard (controller.sharding) and
guards shard i with the Lease `<lease-name>-shard-<i>-of-<S>`. Each shard's Lease is run by its own
`LeaderElector` (controller/k8s/leader.py), on its own thread, so every guarantee of the single Lease holds per
shard: a holder acts only until renew_deadline after the start of its last good renew (on its monotonic clock),
and another replica takes a shard over only after seeing its record unchanged for leaseDuration on its own
monotonic clock (or released). A slow request on one shard never delays another shard's renewal.

**One actor per rollout, per tick.** `ShardSelection` (the loop's rollout filter) snapshots at the start of each
tick the shards held and their terms (a term counts this replica's leadership changes on the shard); only the
rollouts of those shards reach the runner. `may_write()` (the runner's and the loop's check) is True only while
EVERY shard of the snapshot is still held in the same term, and `write_deadline()` (the KubeApi write guard,
installed on the ApiClient) is the earliest of their terms, so no write outlives any of them. Losing a shard
therefore stops every write of the tick at once, and its rollouts are dropped from the next tick. A shard lost
and re-acquired between two ticks (its term changed) is left out for one tick, so the runner and the route
backend forget what they remembered about its rollouts (another replica may have moved them meanwhile) and
re-read their state from the route objects' annotations when they come back (`on_gained` also invalidates
the backend's confirmed routing for them).

**Fair share: a replica holding k shards takes a free one only once it has seen it free for k x stagger.**
stagger = 2 x retry_period. Free means: no Lease yet, released (empty holder), or expired (unchanged for the
holder's leaseDuration). A replica's acquisitions are serialized (one at a time), so k is exact. Consequences:
- safety is the elector's: the rule only delays acquisitions, it never shortens the takeover wait;
- every free shard is taken within (S - 1) x stagger (+ one retry period) of being seen free by a live replica;
- a replica holding fewer shards wins a free shard over one holding more, since it contends at least one
  retry period earlier: replicas started within a stagger of each other split the shards evenly (the chart's
  Recreate strategy starts them together), and a released shard goes to the replica that holds fewest;
- a crashed replica's shard is seen unchanged for leaseDuration before anyone may take it; a survivor holding
  k shards with k x stagger <= leaseDuration takes it at once then: within leaseDuration + one retry period
  (for the default 15 s / 2 s, while a survivor holds at most 3 shards; otherwise k x stagger after it is seen);
- no rebalancing of held shards: a replica keeps what it holds until it stops or fails, and a replica started
  when every shard is held is a standby (replicas >= shards gives capacity, more are standbys).
Graceful stop releases every held Lease, so successors take over on their next attempt.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from kubernetes.client import ApiClient

from controller.deadline import Deadline
from controller.engine.commands import CommandRequest
from controller.engine.phases import RolloutState
from controller.engine.ports import ManagedRollout
from controller.engine.state_port import CommandPending
from controller.k8s.client import LEADERSHIP_ATTR
from controller.k8s.events import EventRecorder, EventType, ObjectRef
from controller.k8s.leader import LeaderElectionForbidden, LeaderElector, LeaseConfig
from controller.k8s.rollout_bridge import CommandChannel, ResourceWrites
from controller.sharding import lease_name_for, shard_of, validate_shards
from controller.spec_sources import ResourceKey

log = structlog.get_logger("ramp.shards")
Snapshot = Mapping[int, int]  # shard -> term held at the start of a tick


class ShardLeases:
    """One LeaderElector per shard; what this replica holds, and the write guard of the current tick."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        base_name: str,
        identity: str,
        shards: int,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        validate_shards(shards)
        self.shards = shards
        self.identity = identity
        self.stagger = 2 * retry_period
        self._clock = clock
        self._lock = threading.Lock()
        self._acquiring = threading.Lock()  # one acquisition at a time: the count of held shards is exact
        self._terms = [0] * shards
        self._tick: tuple[tuple[int, int], ...] = ()
        self.electors = [
            LeaderElector(
                api_client,
                LeaseConfig(
                    namespace=namespace,
                    identity=identity,
                    name=lease_name_for(base_name, shard, shards),
                    lease_duration=lease_duration,
                    renew_deadline=renew_deadline,
                    retry_period=retry_period,
                ),
                clock=clock,
                wall_clock=wall_clock,
                may_acquire=self._may_acquire,
                on_started_leading=functools.partial(self._new_term, shard),
                on_stopped_leading=functools.partial(self._new_term, shard),
            )
            for shard in range(shards)
        ]
        self.config = self.electors[0].config
        setattr(api_client, LEADERSHIP_ATTR, self)  # every KubeApi on this client: writes only within the tick's terms
        self._last_ok = [clock()] * shards
        self._errors: list[str | None] = [None] * shards
        self._forbidden = [False] * shards
        self.threads: list[threading.Thread] = []

    # -- what is held -------------------------------------------------------------------------------------

    def _new_term(self, shard: int) -> None:
        """Counted on every start AND stop of leadership: the elector reports a stop (a lapse noticed, a lost
        race, a release) before it can win again, so a shard re-won after a gap never looks like the same term,
        not even in the instant between the win and its callback."""
        with self._lock:
            self._terms[shard] += 1

    def held(self) -> dict[int, int]:
        """The shards held now (each within its renew deadline) -> their current term."""
        with self._lock:
            terms = list(self._terms)
        return {shard: terms[shard] for shard, elector in enumerate(self.electors) if elector.is_leader()}

    def _may_acquire(self, unchanged_for: float) -> bool:
        return unchanged_for >= len(self.held()) * self.stagger

    # -- the tick's guard ---------------------------------------------------------------------------------

    def begin_tick(self) -> dict[int, int]:
        """Snapshot the shards held (and their terms) for the tick that starts now; returns it."""
        held = self.held()
        with self._lock:
            self._tick = tuple(sorted(held.items()))
        return held

    def may_write(self) -> bool:
        """True only while every shard of the tick's snapshot is still held, in the same term (none: False)."""
        with self._lock:
            snapshot, terms = self._tick, list(self._terms)
        return bool(snapshot) and all(
            self.electors[shard].is_leader() and terms[shard] == term for shard, term in snapshot
        )

    is_leader = may_write  # the name the KubeApi write guard asks (see controller.k8s.client)

    def write_deadline(self) -> Deadline:
        """The earliest term of the tick's shards as a Deadline; already expired when `may_write()` is False."""
        with self._lock:
            snapshot = self._tick
        if not self.may_write():
            return Deadline(0.0, clock=self._clock, started=max(0.0, self._clock()))
        return min((self.electors[shard].write_deadline() for shard, _ in snapshot), key=lambda d: d.at)

    # -- running ------------------------------------------------------------------------------------------

    def attempt(self, shard: int) -> None:
        """One acquire/renew attempt on `shard` (acquisitions serialized), recording how it went."""
        elector = self.electors[shard]
        failures = elector.failures
        try:
            if elector.is_leader():
                elector.try_acquire_or_renew()
            else:
                with self._acquiring:
                    elector.try_acquire_or_renew()
            if elector.failures == failures:
                self._last_ok[shard], self._errors[shard], self._forbidden[shard] = self._clock(), None, False
            else:
                self._errors[shard] = "the last lease request failed (see the logs)"
        except LeaderElectionForbidden as exc:
            self._errors[shard], self._forbidden[shard] = str(exc), True
        except Exception as exc:
            self._errors[shard] = f"{type(exc).__name__}: {exc}"[:300]
            log.exception("shard election attempt failed", shard=shard)

    def _run(self, shard: int, stop: threading.Event, release_on_stop: bool) -> None:
        elector = self.electors[shard]
        try:
            while not stop.is_set():
                self.attempt(shard)
                stop.wait(elector.config.retry_period)
        finally:
            if release_on_stop:
                elector.release()  # stops acting first; a successor takes over on its next attempt
            else:
                elector._step_down("stopped")

    def start(self, stop: threading.Event, release_on_stop: bool = True) -> None:
        """One election thread per shard until `stop`; then each releases its Lease (unless told not to)."""
        self.threads = [
            threading.Thread(
                target=self._run, args=(shard, stop, release_on_stop), name=f"ramp-shard-{shard}", daemon=True
            )
            for shard in range(self.shards)
        ]
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, end - time.monotonic()))

    def alive(self) -> bool:
        return bool(self.threads) and all(thread.is_alive() for thread in self.threads)

    def describe(self) -> str:
        held = sorted(self.held())
        return f"holding shards {','.join(map(str, held)) or 'none'} of {self.shards}"

    def status(self) -> tuple[bool, str]:
        """Broken: an election thread ended, RBAC forbids a shard's Lease, or a shard had no successful lease
        request for a whole lease duration."""
        if not self.alive():
            return False, "shard election threads stopped"
        now = self._clock()
        for shard in range(self.shards):
            error = self._errors[shard]
            if self._forbidden[shard] and error is not None:
                return False, error
            quiet = now - self._last_ok[shard]
            if quiet > self.config.lease_duration:
                return False, f"shard {shard}: no successful lease request for {quiet:.0f}s: {error or 'none answered'}"
        return True, f"shard election working, {self.describe()}"


class ShardSelection:
    """The loop's rollout filter: at each tick's start, the rollouts of the shards held (see the module doc)."""

    def __init__(
        self, leases: ShardLeases, on_gained: Callable[[Sequence[ManagedRollout]], None] | None = None
    ) -> None:
        self.leases = leases
        self.on_gained = on_gained
        self._given: dict[int, int] = {}  # shard -> term whose rollouts the runner has

    def shard(self, namespace: str, service: str) -> int:
        return shard_of(namespace, service, self.leases.shards)

    def __call__(self, rollouts: Sequence[ManagedRollout]) -> list[ManagedRollout]:
        snapshot = self.leases.begin_tick()
        given = {s: term for s, term in snapshot.items() if self._given.get(s, term) == term}
        selected = [r for r in rollouts if self.shard(r.spec.namespace, r.spec.service) in given]
        gained = [r for r in selected if self.shard(r.spec.namespace, r.spec.service) not in self._given]
        if given != self._given:
            log.info("shards for this tick", shards=sorted(given), identity=self.leases.identity)
        self._given = given
        if gained and self.on_gained is not None:
            self.on_gained(gained)
        return selected

    def owns(self, namespace: str, service: str) -> bool:
        """Whether this tick acts for the rollout of namespace/service (its shard given, the terms still held)."""
        return self.shard(namespace, service) in self._given and self.leases.may_write()


class ShardedResources:
    """The RampRollout bridge's writes, commands and Events, limited to the resources of this tick's shards.

    A resource's shard is its running rollout's (namespace, service); for a refused resource, its namespace and
    `spec.service` when readable, else its name. Another shard's command is left for its owner (CommandPending:
    the bridge tries again next tick)."""

    def __init__(
        self,
        selection: ShardSelection,
        rollouts: Callable[[], Sequence[ManagedRollout]],
        objects: Callable[[], Mapping[ResourceKey, dict[str, Any]]],
    ) -> None:
        self.selection = selection
        self._rollouts = rollouts
        self._objects = objects
        self._index: tuple[int, dict[ResourceKey, tuple[str, str]]] = (-1, {})

    def owns(self, namespace: str, name: str) -> bool:
        rollouts = self._rollouts()
        if self._index[0] != id(rollouts):
            keyed = {(r.resource.namespace, r.resource.name): (r.spec.namespace, r.spec.service)
                     for r in rollouts if r.resource is not None}  # fmt: skip
            self._index = (id(rollouts), keyed)
        where = self._index[1].get((namespace, name))
        if where is None:
            spec = (self._objects().get((namespace, name)) or {}).get("spec")
            service = spec.get("service") if isinstance(spec, dict) else None
            where = (namespace, service if isinstance(service, str) else name)
        return self.selection.owns(*where)

    def writes(self, inner: ResourceWrites) -> ResourceWrites:
        return _ShardWrites(self, inner)

    def commands(self, inner: CommandChannel) -> CommandChannel:
        return _ShardCommands(self.selection, inner)

    def events(self, inner: EventRecorder) -> EventRecorder:
        return _ShardEvents(self, inner)


class _ShardWrites:
    def __init__(self, shards: ShardedResources, inner: ResourceWrites) -> None:
        self.shards, self.inner = shards, inner

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any], deadline: Deadline) -> object:
        if not self.shards.owns(namespace, name):
            return None  # its shard's holder writes it
        return self.inner.patch_status(namespace, name, status, deadline)

    def remove_command(self, namespace: str, name: str, raw_value: str, deadline: Deadline) -> bool:
        return self.shards.owns(namespace, name) and self.inner.remove_command(namespace, name, raw_value, deadline)


class _ShardCommands:
    def __init__(self, selection: ShardSelection, inner: CommandChannel) -> None:
        self.selection, self.inner = selection, inner

    def request_command(self, namespace: str, service: str, command: CommandRequest, router: str | None = None) -> None:
        if not self.selection.owns(namespace, service):
            raise CommandPending(f"{namespace}/{service} belongs to a shard this replica does not hold")
        self.inner.request_command(namespace, service, command, router)

    def load(self, rollout: str) -> RolloutState | None:
        return self.inner.load(rollout)


class _ShardEvents(EventRecorder):
    """An EventRecorder that records only for resources of this tick's shards (others: False, as a failure)."""

    def __init__(self, shards: ShardedResources, inner: EventRecorder) -> None:  # no super(): delegates
        self.shards, self.inner = shards, inner

    def record(
        self, namespace: str, involved: ObjectRef, reason: str, message: str, type: EventType = "Normal"
    ) -> bool:
        if not self.shards.owns(namespace, involved.name):
            return False
        return self.inner.record(namespace, involved, reason, message, type)
