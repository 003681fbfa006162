"""Secrets stay secret: a Prometheus URL with credentials, and a Prometheus that echoes them back in its errors.

The whole cluster controller runs (the real kubernetes client against the emulator); the rollout is rolled back
for missing data, with reasons that name Prometheus. Neither the password nor the user:password pair may appear in
the state annotation, the Events, the logs or /metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

from structlog.testing import capture_logs

from controller.analysis.prometheus import PrometheusSource
from tests.fakes.prometheus import FakePrometheus, Reply
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import VS, create_deployment, stored
from tests.k8s.test_cluster_controller import SPEC, get, rollout_state, start, wait_until

PASSWORD = "S3cr3t-pa55word"
USER = "ramp-reader"


def test_prometheus_credentials_never_reach_annotations_events_logs_or_metrics(
    kube: KubeHarness, tmp_path: Path
) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    fast = SPEC.replace("interval: 2s", "interval: 1s").replace("missing_data_timeout: 60s", "missing_data_timeout: 3s")
    (specs / "demo.yaml").write_text(fast)
    for version in ("v1", "v2"):
        create_deployment(kube, "default", "demo", version, 1)
    echo = {"status": "error", "errorType": "bad_data", "error": f"query by {USER}:{PASSWORD} refused"}
    with FakePrometheus(basic_auth=(USER, PASSWORD)) as prom, capture_logs() as logs:
        prom.answer("", Reply(status=400, body=echo))  # hostile: the credentials come back in the error
        source = PrometheusSource(prom.url_with(f"{USER}:{PASSWORD}"), timeout_seconds=1.0)
        assert PASSWORD not in repr(source) and PASSWORD not in source.url
        stop, thread, port = start(kube, tmp_path, "replica-a", prometheus=source, tick_deadline=3.0)
        try:
            wait_until(lambda: (rollout_state(kube) or {}).get("phase") == "RolledBack", timeout=40)
            metrics = get(port, "/metrics")[1]
        finally:
            stop.set()
            thread.join(30)
    assert prom.authorizations and all(a is not None and a.startswith("Basic ") for a in prom.authorizations)
    state = rollout_state(kube)
    assert state is not None and "Prometheus" in str(state["reason"])  # the reason names the source...
    vs = stored(kube, VS, "default", "demo")
    events = kube.objects("", "v1", "events")
    assert events, "the rollback is recorded as an Event"
    assert any("did not answer" in json.dumps(entry, default=str) or "unusable" in json.dumps(entry, default=str)
               for entry in logs), "the logs were captured and talk about Prometheus"  # fmt: skip
    places = {
        "annotations": json.dumps(vs["metadata"].get("annotations", {}) if vs else {}),
        "events": json.dumps(events),
        "logs": json.dumps(logs, default=str),
        "metrics": metrics,
    }
    for where, text in places.items():  # ... but never the secret
        assert PASSWORD not in text, f"the password leaked into {where}"
        assert f"{USER}:" not in text, f"the user:password pair leaked into {where}"
