"""Lease leader election against the emulator, with injected clocks (no sleeping for lease durations)."""

from __future__ import annotations

import asyncio
import datetime
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import CoordinationV1Api
from structlog.testing import capture_logs

from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.engine.scheduler import TickScheduler
from controller.k8s.leader import MAX_LEASE_SECONDS, LeaderElectionForbidden, LeaderElector, LeaseConfig
from controller.state.file_store import FileStateStore
from tests.k8s.emulator import KubeHarness
from tests.unit.engine_fixtures import FakeClock, FixedMetrics, RecordingRouter, spec

NS = "ramp-system"
WHO = "X-Ramp-Test-Elector"  # test-only header: lets a fault target one replica's requests
MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|\+00:00)$")


class Clocks:
    """One monotonic and one wall clock for the test; replicas see the monotonic one with an offset."""

    def __init__(self) -> None:
        self.mono = FakeClock(100.0)
        self.wall = FakeClock(1_700_000_000.0)

    def advance(self, seconds: float) -> None:
        self.mono.advance(seconds)
        self.wall.advance(seconds)


class Replica:
    def __init__(
        self, kube: KubeHarness, identity: str, clocks: Clocks, offset: float = 0.0, wall_skew: float = 0.0,
        **config: Any,
    ) -> None:  # fmt: skip
        self.transitions: list[tuple[str, float]] = []
        api = kube.api_client()
        api.set_default_header(WHO, identity)
        self.elector = LeaderElector(
            api,
            LeaseConfig(namespace=NS, identity=identity, **config),
            clock=lambda: clocks.mono() + offset,  # monotonic clocks of different processes are unrelated
            wall_clock=lambda: clocks.wall() + wall_skew,  # and wall clocks of different nodes disagree
            on_started_leading=lambda: self.transitions.append(("started", clocks.mono())),
            on_stopped_leading=lambda: self.transitions.append(("stopped", clocks.mono())),
        )


def lease(kube: KubeHarness) -> dict[str, Any]:
    (found,) = kube.objects("coordination.k8s.io", "v1", "leases")
    return found


def isolate(kube: KubeHarness, down: set[str], status: int = 500) -> None:
    """Every request of a replica whose identity is in `down` fails with `status` (mutate `down` to heal)."""
    kube.emulator[lambda request: request.headers.get(WHO) in down] << status


def lease_reads_meet(kube: KubeHarness) -> None:
    """The next two Lease reads are answered only once both have arrived: both see the same version."""
    barrier = asyncio.Barrier(2)

    async def meet() -> object:
        await asyncio.wait_for(barrier.wait(), 5)
        return NotImplemented  # no response of our own: the emulator serves the read

    kube.emulator["get"] << meet


def test_config_rejects_timings_without_a_safety_gap() -> None:
    with pytest.raises(ValueError, match="renew_deadline"):
        LeaseConfig(namespace=NS, identity="a", lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError, match="retry_period"):
        LeaseConfig(namespace=NS, identity="a", renew_deadline=2, retry_period=2)
    with pytest.raises(ValueError, match="identity"):
        LeaseConfig(namespace=NS, identity="")


def test_exactly_one_leads_and_the_leader_keeps_renewing(kube: KubeHarness) -> None:
    clocks = Clocks()
    a, b = Replica(kube, "a", clocks), Replica(kube, "b", clocks, offset=5_000.0)
    assert a.elector.try_acquire_or_renew() is True
    assert b.elector.try_acquire_or_renew() is False
    assert a.elector.is_leader() and not b.elector.is_leader()
    first = lease(kube)["spec"]
    assert first["holderIdentity"] == "a" and first["leaseTransitions"] == 0 and first["leaseDurationSeconds"] == 15
    assert MICRO.match(first["renewTime"]) and first["acquireTime"] == first["renewTime"]
    renew_times = [first["renewTime"]]
    for _ in range(20):  # 40s: far beyond the lease duration, b never gets it while a renews
        clocks.advance(2.0)
        assert a.elector.try_acquire_or_renew() is True
        assert b.elector.try_acquire_or_renew() is False
        assert a.elector.is_leader() and not b.elector.is_leader()
        current = lease(kube)["spec"]
        assert current["holderIdentity"] == "a" and current["leaseTransitions"] == 0
        assert current["acquireTime"] == first["acquireTime"] and MICRO.match(current["renewTime"])
        renew_times.append(current["renewTime"])
    assert renew_times == sorted(set(renew_times))  # every round wrote a later renewTime
    assert a.transitions == [("started", 100.0)] and b.transitions == []


def test_a_leader_that_cannot_renew_stops_acting_before_anyone_can_take_over(kube: KubeHarness) -> None:
    clocks = Clocks()
    a, b = Replica(kube, "a", clocks), Replica(kube, "b", clocks, offset=-42.0)
    down: set[str] = set()
    isolate(kube, down)
    for _ in range(3):  # a acquires and renews twice; b observes each renewal right after it
        assert a.elector.try_acquire_or_renew() is True
        assert b.elector.try_acquire_or_renew() is False
        last_renew = clocks.mono()
        clocks.advance(2.0)
    down.add("a")  # a is cut off from the apiserver from now on
    a_stopped = b_took_over = None
    while b_took_over is None and clocks.mono() < last_renew + 60:
        assert a.elector.try_acquire_or_renew() is False
        if a_stopped is None and not a.elector.is_leader():
            a_stopped = clocks.mono()
        if b.elector.try_acquire_or_renew():
            b_took_over = clocks.mono()
        assert not (a.elector.is_leader() and b.elector.is_leader()), "two leaders at once"
        clocks.advance(0.5)
    assert a_stopped == last_renew + 10.0  # renew_deadline after its last good renew
    assert b_took_over == last_renew + 15.0  # lease_duration after b last saw the record change
    assert a_stopped < b_took_over
    assert a.transitions == [("started", last_renew - 4.0), ("stopped", a_stopped)]
    assert b.transitions == [("started", b_took_over)] and b.elector.is_leader()
    after = lease(kube)["spec"]
    assert after["holderIdentity"] == "b" and after["leaseTransitions"] == 1
    assert after["acquireTime"] == after["renewTime"]
    down.clear()  # a is back: it finds b holding a live lease and does not take it back
    clocks.advance(2.0)
    assert b.elector.try_acquire_or_renew() is True
    assert a.elector.try_acquire_or_renew() is False and not a.elector.is_leader()


@pytest.mark.parametrize("skew", [600.0, -600.0], ids=["standby-10min-ahead", "standby-10min-behind"])
def test_takeover_timing_does_not_depend_on_the_replicas_wall_clocks(kube: KubeHarness, skew: float) -> None:
    """Expiry is measured on the standby's monotonic clock from when it saw the record change, never as
    `now - renewTime` across machines: 10 minutes ahead it does not take over early (a renewTime 10 minutes
    "old" is still live), 10 minutes behind it does not wait 10 minutes more."""
    clocks = Clocks()
    a, b = Replica(kube, "a", clocks), Replica(kube, "b", clocks, offset=-7.0, wall_skew=skew)
    assert a.elector.try_acquire_or_renew() is True
    for _ in range(20):  # 40s of renewals: b never takes over, though renewTime looks 10 min old (or in the future)
        assert b.elector.try_acquire_or_renew() is False
        clocks.advance(1.0)
        assert b.elector.try_acquire_or_renew() is False
        clocks.advance(1.0)
        assert a.elector.try_acquire_or_renew() is True
    assert b.elector.try_acquire_or_renew() is False
    last_seen_change = clocks.mono()  # a dies right after this renewal; b saw it at once
    took_over = None
    while took_over is None and clocks.mono() < last_seen_change + 700:
        clocks.advance(0.5)
        if b.elector.try_acquire_or_renew():
            took_over = clocks.mono()
    assert took_over == last_seen_change + 15.0  # exactly lease_duration on b's own clock, whatever the skew
    spec = lease(kube)["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    written = datetime.datetime.fromisoformat(spec["acquireTime"].replace("Z", "+00:00")).timestamp()
    assert written == pytest.approx(clocks.wall() + skew, abs=1e-3)  # renewTime is b's wall clock: for people only


def test_the_write_deadline_is_the_leadership_term(kube: KubeHarness) -> None:
    clocks = Clocks()
    a, b = Replica(kube, "a", clocks, offset=33.0), Replica(kube, "b", clocks)
    assert b.elector.write_deadline().expired  # never led
    assert a.elector.try_acquire_or_renew() is True
    assert a.elector.write_deadline().at == clocks.mono() + 33.0 + 10.0  # renew start + renew_deadline, a's clock
    assert b.elector.try_acquire_or_renew() is False and b.elector.write_deadline().expired
    term = a.elector.write_deadline()
    for _ in range(12):  # is_leader() and the write deadline end at the same instant
        clocks.advance(1.0)
        assert a.elector.is_leader() == (not a.elector.write_deadline().expired) == (not term.expired)
    assert not a.elector.is_leader() and term.expired
    assert a.elector.try_acquire_or_renew() is True  # a new term
    assert a.elector.write_deadline().remaining() == 10.0 and term.expired
    assert a.elector.release() is True and a.elector.write_deadline().expired


def test_an_absurd_lease_duration_cannot_wedge_election(kube: KubeHarness) -> None:
    """A Lease left by a buggy or hostile writer declaring 10^9 s: honoured only up to MAX_LEASE_SECONDS."""
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "ramp-controller"},
            "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 10**9}}  # fmt: skip
    CoordinationV1Api(kube.api_client()).create_namespaced_lease(NS, body, _preload_content=False)
    clocks = Clocks()
    b = Replica(kube, "b", clocks)
    seen = clocks.mono()
    assert b.elector.try_acquire_or_renew() is False
    clocks.advance(MAX_LEASE_SECONDS - 0.5)
    assert b.elector.try_acquire_or_renew() is False  # still within what we honour
    clocks.advance(0.5)
    assert b.elector.try_acquire_or_renew() is True and clocks.mono() == seen + MAX_LEASE_SECONDS
    assert lease(kube)["spec"]["leaseDurationSeconds"] == 15


def test_a_malformed_lease_is_a_failed_attempt_not_a_crash(kube: KubeHarness) -> None:
    clocks = Clocks()
    a = Replica(kube, "a", clocks)
    assert a.elector.try_acquire_or_renew() is True
    kube.emulator["get"] << {"kind": "Lease", "metadata": "not an object", "spec": 7}
    for _ in range(5):
        clocks.advance(2.0)
        assert a.elector.try_acquire_or_renew() is False
    assert a.elector.failures == 5 and not a.elector.is_leader()  # the renew deadline passed: it stopped acting
    assert a.transitions == [("started", 100.0), ("stopped", 110.0)]


def test_transient_errors_keep_leadership_until_the_renew_deadline(kube: KubeHarness) -> None:
    clocks = Clocks()
    a = Replica(kube, "a", clocks)
    down: set[str] = set()
    isolate(kube, down, status=503)
    assert a.elector.try_acquire_or_renew() is True
    down.add("a")
    clocks.advance(9.9)
    assert a.elector.try_acquire_or_renew() is False
    assert a.elector.is_leader() and a.elector.failures == 1  # still inside the renew deadline
    down.clear()
    assert a.elector.try_acquire_or_renew() is True  # renewed in time: leadership never lapsed
    clocks.advance(9.9)
    assert a.elector.is_leader()
    assert a.transitions == [("started", 100.0)]


def test_graceful_release_lets_the_other_replica_take_over_at_once(kube: KubeHarness) -> None:
    clocks = Clocks()
    a, b = Replica(kube, "a", clocks), Replica(kube, "b", clocks)
    assert a.elector.try_acquire_or_renew() is True
    assert b.elector.try_acquire_or_renew() is False
    assert a.elector.release() is True
    assert not a.elector.is_leader() and a.transitions[-1] == ("stopped", clocks.mono())
    released = lease(kube)["spec"]
    assert released.get("holderIdentity") is None and released["leaseDurationSeconds"] == 1
    assert b.elector.try_acquire_or_renew() is True  # same instant: no waiting for expiry
    taken = lease(kube)["spec"]
    assert taken["holderIdentity"] == "b" and taken["leaseTransitions"] == 1 and taken["leaseDurationSeconds"] == 15
    assert a.elector.release() is False  # not the holder: leaves b's lease alone
    assert lease(kube)["spec"]["holderIdentity"] == "b"


@pytest.mark.parametrize("existing", [None, "old"], ids=["create", "takeover"])
def test_a_race_on_acquire_has_exactly_one_winner(kube: KubeHarness, existing: str | None) -> None:
    clocks = Clocks()
    a, b = Replica(kube, "a", clocks), Replica(kube, "b", clocks)
    if existing is not None:  # a lease left by a replica that died without releasing it
        assert Replica(kube, existing, clocks).elector.try_acquire_or_renew() is True
        assert a.elector.try_acquire_or_renew() is False and b.elector.try_acquire_or_renew() is False
        clocks.advance(15.0)
    lease_reads_meet(kube)
    results: dict[str, bool] = {}

    def attempt(replica: Replica) -> None:
        results[replica.elector.config.identity] = replica.elector.try_acquire_or_renew()

    threads = [threading.Thread(target=attempt, args=(r,)) for r in (a, b)]
    with capture_logs() as logs:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert sorted(results.values()) == [False, True], results
    assert [e["event"] for e in logs].count("lost a write race on the lease") == 1  # both wrote; one got 409
    winner = next(name for name, won in results.items() if won)
    loser = a if winner == "b" else b
    assert lease(kube)["spec"]["holderIdentity"] == winner
    assert lease(kube)["spec"]["leaseTransitions"] == (0 if existing is None else 1)
    assert loser.elector.failures == 1 and not loser.elector.is_leader()
    assert loser.elector.try_acquire_or_renew() is False  # next round: the winner holds a live lease
    assert [r.elector.is_leader() for r in (a, b)].count(True) == 1


def test_a_conflict_on_renew_ends_leadership_for_that_round(kube: KubeHarness) -> None:
    clocks = Clocks()
    a = Replica(kube, "a", clocks)
    assert a.elector.try_acquire_or_renew() is True
    puts = kube.emulator["put"]
    seen = len(puts)
    puts[seen : seen + 1] << 409  # the next PUT only
    clocks.advance(2.0)
    assert a.elector.try_acquire_or_renew() is False and not a.elector.is_leader()
    clocks.advance(2.0)
    assert a.elector.try_acquire_or_renew() is True  # the record still names a: renewed
    assert [t for t, _ in a.transitions] == ["started", "stopped", "started"]


def test_forbidden_is_a_clear_error_and_reported_once(kube: KubeHarness) -> None:
    clocks = Clocks()
    a = Replica(kube, "a", clocks)
    assert a.elector.try_acquire_or_renew() is True
    isolate(kube, {"a"}, status=403)
    clocks.advance(2.0)
    with capture_logs() as logs:
        for _ in range(2):
            with pytest.raises(LeaderElectionForbidden) as forbidden:
                a.elector.try_acquire_or_renew()
            clocks.advance(2.0)
    message = str(forbidden.value)
    for needed in ("403", "RBAC", "get", "create", "update", "'leases'", "'coordination.k8s.io'", f"{NS!r}"):
        assert needed in message
    assert not a.elector.is_leader() and a.transitions[-1] == ("stopped", 102.0)  # stepped down at once
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["leader election forbidden"]


def test_run_acquires_in_the_background_and_releases_on_stop(kube: KubeHarness) -> None:
    started, stopped = threading.Event(), threading.Event()
    api = kube.api_client()
    config = LeaseConfig(namespace=NS, identity="a", lease_duration=3, renew_deadline=2, retry_period=0.05)
    elector = LeaderElector(api, config, on_started_leading=started.set, on_stopped_leading=stopped.set)
    stop = threading.Event()
    thread = threading.Thread(target=elector.run, args=(stop,))
    thread.start()
    try:
        assert started.wait(5) and elector.is_leader()
        renewals = elector.renewals
        deadline = time.monotonic() + 5
        while elector.renewals < renewals + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert elector.renewals >= renewals + 2  # it keeps renewing every retry_period
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive() and stopped.is_set() and not elector.is_leader()
    assert lease(kube)["spec"].get("holderIdentity") is None  # released for a successor


def _scheduler(tmp_path: Path, should_act: Callable[[], bool] | None) -> tuple[TickScheduler, RecordingRouter]:
    router = RecordingRouter()
    runner = RolloutRunner(router=router, metrics=FixedMetrics(), store=FileStateStore(tmp_path), clock=FakeClock())
    runner.set_rollouts([ManagedRollout.from_spec(spec())])
    return TickScheduler(runner, should_act=should_act), router


def test_scheduler_ticks_only_while_the_guard_allows(tmp_path: Path, kube: KubeHarness) -> None:
    clocks = Clocks()
    a, b = Replica(kube, "a", clocks), Replica(kube, "b", clocks)
    assert a.elector.try_acquire_or_renew() and not b.elector.try_acquire_or_renew()
    follower, follower_router = _scheduler(tmp_path / "b", b.elector.is_leader)
    follower.start()  # the first tick runs on this thread
    follower.stop()
    assert follower.skipped == 1 and follower.errors == 0 and follower_router.applied == []
    leader, leader_router = _scheduler(tmp_path / "a", a.elector.is_leader)
    leader.start()
    leader.stop()
    assert leader.skipped == 0 and len(leader_router.applied) == 1
    unguarded, unguarded_router = _scheduler(tmp_path / "c", None)
    unguarded.start()
    unguarded.stop()
    assert unguarded.skipped == 0 and len(unguarded_router.applied) == 1
