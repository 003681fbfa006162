"""Reads and writes of one RampRollout through the real `kubernetes` client over HTTP, against the fake apiserver:
the status replaced wholesale, the command annotation removed only while it holds the applied value, a command
requested only when none is pending, and every call bounded by its deadline against a dribbling server."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import CustomObjectsApi

from controller.deadline import Deadline
from controller.engine.commands import CommandRequest
from controller.engine.phases import Command
from controller.k8s.client import KubeApi, RetryPolicy
from controller.k8s.errors import KubeDeadlineExceeded, NotFound, NotLeader
from controller.k8s.rollout_writes import RolloutResourceClient
from controller.rollout_resource import COMMAND_ANNOTATION, GROUP, PLURAL, VERSION
from controller.state.file_store import CommandPending
from tests.fakes.kube_watch import FakeKube, Seen, rollout, running_fake_kube
from tests.k8s.emulator import KubeHarness

STATUS_PATH = "/apis/ramp.dev/v1/namespaces/shop/ramprollouts/reviews/status"


@pytest.fixture()
def fake() -> Iterator[FakeKube]:
    """The fault-injecting fake apiserver (the emulator is the `kube` fixture of conftest.py)."""
    with running_fake_kube() as fake:
        yield fake


def client(fake: FakeKube, **api: Any) -> RolloutResourceClient:
    """Backoff sleeps recorded, not slept (deterministic jitter)."""
    retry = RetryPolicy(sleep=lambda _s: None, rng=random.Random(5))
    return RolloutResourceClient(KubeApi(fake.api_client(timeout=2.0), retry=retry, **api))


def with_command(value: str | None, **annotations: str) -> dict[str, Any]:
    obj = rollout("shop", "reviews")
    if value is not None:
        annotations[COMMAND_ANNOTATION] = value
    obj["metadata"]["annotations"] = annotations
    return obj


def soon() -> Deadline:
    return Deadline(2.0)


def test_get(fake: FakeKube) -> None:
    fake.create(rollout("shop", "reviews"))
    found = client(fake).get("shop", "reviews", soon())
    assert found is not None and found["spec"]["service"] == "reviews"
    assert client(fake).get("shop", "missing", soon()) is None


def test_patch_status_replaces_the_status_wholesale(fake: FakeKube) -> None:
    obj = rollout("shop", "reviews")
    obj["status"] = {"phase": "Progressing", "weights": {"v1": 50, "v2": 25, "v3": 25},
                     "lastCommand": {"id": "c1", "command": "pause", "applied": True}}  # fmt: skip
    fake.create(obj)
    new = {"phase": "Promoted", "weights": {"v2": 100}, "observedGeneration": 1, "gates": []}
    client(fake).patch_status("shop", "reviews", new, soon())
    stored = fake.get("shop", "reviews")
    assert stored is not None
    assert stored["status"] == new  # v1/v3 weights and lastCommand gone: nothing stale survives
    assert stored["spec"] == rollout("shop", "reviews")["spec"] and stored["metadata"]["generation"] == 1
    (patch,) = [r for r in fake.requests if r.method == "PATCH"]
    assert patch.path == STATUS_PATH and patch.content_type.startswith("application/json-patch+json")


def test_patch_status_of_a_deleted_resource_is_not_an_error(fake: FakeKube) -> None:
    client(fake).patch_status("shop", "reviews", {"phase": "Pending"}, soon())
    assert [r.path for r in fake.requests] == [STATUS_PATH]


def test_patch_status_retries_transient_failures_within_its_deadline(fake: FakeKube) -> None:
    fake.create(rollout("shop", "reviews"))
    fake.object_faults.extend([503, 500])
    client(fake).patch_status("shop", "reviews", {"phase": "Progressing"}, soon())
    stored = fake.get("shop", "reviews")
    assert stored is not None and stored["status"] == {"phase": "Progressing"}
    assert sum(r.method == "PATCH" for r in fake.requests) == 3


def test_writes_are_refused_when_this_replica_may_not_write(fake: FakeKube) -> None:
    fake.create(rollout("shop", "reviews"))
    follower = client(fake, write_guard=lambda: False)
    with pytest.raises(NotLeader):
        follower.patch_status("shop", "reviews", {"phase": "Promoted"}, soon())
    with pytest.raises(NotLeader):
        follower.remove_command("shop", "reviews", "pause", soon())
    assert not [r for r in fake.requests if r.method == "PATCH"]


def test_remove_command_removes_only_the_applied_value(fake: FakeKube) -> None:
    fake.create(with_command("pause", team="a"))
    assert client(fake).remove_command("shop", "reviews", "pause", soon()) is True
    stored = fake.get("shop", "reviews")
    assert stored is not None and stored["metadata"]["annotations"] == {"team": "a"}
    (patch,) = [r for r in fake.requests if r.method == "PATCH"]
    assert patch.body == [
        {"op": "test", "path": "/metadata/annotations/ramp.dev~1command", "value": "pause"},
        {"op": "remove", "path": "/metadata/annotations/ramp.dev~1command"},
    ]


def test_remove_command_keeps_a_newer_command(fake: FakeKube) -> None:
    newer = CommandRequest(command=Command.RESUME, id="c2").encode()
    fake.create(with_command(newer))
    assert client(fake).remove_command("shop", "reviews", "pause", soon()) is False
    stored = fake.get("shop", "reviews")
    assert stored is not None and stored["metadata"]["annotations"][COMMAND_ANNOTATION] == newer


def test_remove_command_when_it_is_already_gone(fake: FakeKube) -> None:
    fake.create(with_command(None))
    assert client(fake).remove_command("shop", "reviews", "pause", soon()) is True  # no annotations at all
    assert client(fake).remove_command("shop", "missing", "pause", soon()) is True  # the resource is gone


def test_request_command_sets_the_annotation(fake: FakeKube) -> None:
    fake.create(with_command(None, team="a"))
    request = CommandRequest(command=Command.PAUSE, id="c1", by="alice")
    written = client(fake).request_command("shop", "reviews", request, soon())
    stored = fake.get("shop", "reviews")
    assert stored is not None and stored["metadata"]["annotations"] == {"team": "a", COMMAND_ANNOTATION: written}
    assert CommandRequest.decode(written) == request
    (patch,) = [r for r in fake.requests if r.method == "PATCH"]
    assert patch.content_type.startswith("application/merge-patch+json")
    assert patch.body["metadata"]["resourceVersion"]  # the precondition


def test_request_command_refuses_when_one_is_pending(fake: FakeKube) -> None:
    pending = CommandRequest(command=Command.ABORT, id="c0").encode()
    fake.create(with_command(pending))
    with pytest.raises(CommandPending, match=r"abort \(id c0\) is still waiting.*RampRollout shop/reviews"):
        client(fake).request_command("shop", "reviews", CommandRequest(command=Command.PROMOTE), soon())
    stored = fake.get("shop", "reviews")
    assert stored is not None and stored["metadata"]["annotations"][COMMAND_ANNOTATION] == pending
    with pytest.raises(NotFound):
        client(fake).request_command("shop", "missing", CommandRequest(command=Command.PAUSE), soon())


def test_request_command_never_replaces_a_command_written_concurrently(fake: FakeKube) -> None:
    fake.create(with_command(None))
    theirs = CommandRequest(command=Command.ABORT, id="bob").encode()

    def someone_else_first(seen: Seen) -> None:
        if seen.method == "PATCH" and fake.before is not None:
            fake.before = None
            fake.update("shop", "reviews", lambda o: o["metadata"].setdefault("annotations", {})
                        .update({COMMAND_ANNOTATION: theirs}))  # fmt: skip

    fake.before = someone_else_first
    with pytest.raises(CommandPending, match="id bob"):
        client(fake).request_command("shop", "reviews", CommandRequest(command=Command.PAUSE, id="me"), soon())
    stored = fake.get("shop", "reviews")
    assert stored is not None and stored["metadata"]["annotations"][COMMAND_ANNOTATION] == theirs
    assert [r.method for r in fake.requests] == ["GET", "PATCH", "GET"]  # 409, re-read, refused


def test_request_command_retries_after_an_unrelated_concurrent_change(fake: FakeKube) -> None:
    fake.create(with_command(None))

    def relabel_once(seen: Seen) -> None:
        if seen.method == "PATCH" and fake.before is not None:
            fake.before = None
            fake.update("shop", "reviews", lambda o: o["metadata"].update(labels={"team": "a"}))

    fake.before = relabel_once
    request = CommandRequest(command=Command.PAUSE, id="me")
    written = client(fake).request_command("shop", "reviews", request, soon())
    stored = fake.get("shop", "reviews")
    assert stored is not None and stored["metadata"]["annotations"][COMMAND_ANNOTATION] == written
    assert stored["metadata"]["labels"] == {"team": "a"}
    assert [r.method for r in fake.requests] == ["GET", "PATCH", "GET", "PATCH"]


@pytest.mark.parametrize("call", ["get", "patch_status", "remove_command", "request_command"])
def test_every_call_is_bounded_by_its_deadline_against_a_dribbling_server(fake: FakeKube, call: str) -> None:
    fake.create(with_command("pause"))
    fake.dribble = 0.2  # one byte every 0.2 s: no per-read timeout ever fires
    writes = client(fake)
    deadline = Deadline(0.6)
    started = time.monotonic()
    with pytest.raises(KubeDeadlineExceeded):
        if call == "get":
            writes.get("shop", "reviews", deadline)
        elif call == "patch_status":
            writes.patch_status("shop", "reviews", {"phase": "Paused"}, deadline)
        elif call == "remove_command":
            writes.remove_command("shop", "reviews", "pause", deadline)
        else:
            writes.request_command("shop", "reviews", CommandRequest(command=Command.PAUSE), deadline)
    assert time.monotonic() - started < 0.6 + 0.3


# --- against the emulator (tests/k8s/emulator.py: status subresource, generation, JSON patch, preconditions) -------


def test_against_the_emulator(kube: KubeHarness) -> None:
    api = CustomObjectsApi(kube.api_client())
    api.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, with_command("pause", team="a"))
    writes = RolloutResourceClient(KubeApi(kube.api_client(timeout=2.0)))

    def stored() -> dict[str, Any]:
        found = writes.get("shop", "reviews", soon())
        assert found is not None
        return found

    writes.patch_status("shop", "reviews", {"phase": "Progressing", "weights": {"v1": 90, "v2": 10}}, soon())
    writes.patch_status("shop", "reviews", {"phase": "Promoted", "weights": {"v2": 100}}, soon())
    after = stored()
    assert after["status"] == {"phase": "Promoted", "weights": {"v2": 100}}
    assert after["metadata"]["generation"] == 1  # a status write is not a spec change

    newer = CommandRequest(command=Command.RESUME, id="c2").encode()
    api.patch_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, "reviews",
                                       {"metadata": {"annotations": {COMMAND_ANNOTATION: newer}}})  # fmt: skip
    assert writes.remove_command("shop", "reviews", "pause", soon()) is False  # the test op failed: 422
    assert stored()["metadata"]["annotations"][COMMAND_ANNOTATION] == newer
    with pytest.raises(CommandPending, match="resume"):
        writes.request_command("shop", "reviews", CommandRequest(command=Command.ABORT), soon())
    assert writes.remove_command("shop", "reviews", newer, soon()) is True
    assert stored()["metadata"]["annotations"] == {"team": "a"}
    written = writes.request_command("shop", "reviews", CommandRequest(command=Command.ABORT, id="c3"), soon())
    assert stored()["metadata"]["annotations"][COMMAND_ANNOTATION] == written
    assert stored()["status"]["phase"] == "Promoted"  # a write to the resource keeps the status
    writes.patch_status("shop", "missing", {"phase": "Pending"}, soon())  # deleted: not an error
    assert writes.remove_command("shop", "missing", "pause", soon()) is True
