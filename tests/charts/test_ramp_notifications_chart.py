"""Global notifications and secret mounts in charts/ramp: rendered by the real Helm engine, read by the real loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli import build_parser
from controller.notify.observer import load_notifications
from tests.charts.rendering import RAMP_CHART, render

NOTIFICATIONS = [
    {"name": "team-chat", "type": "slack", "url_file": "/etc/ramp/secrets/slack/url", "events": ["rolled_back"]},
    {"name": "ops", "type": "webhook", "url": "https://ops.example.com/ramp",
     "secret_file": "/etc/ramp/secrets/ops/key"},
]
MOUNTS = [{"secretName": "ramp-slack", "mountPath": "/etc/ramp/secrets/slack"},
          {"secretName": "ramp-ops", "mountPath": "/etc/ramp/secrets/ops"}]  # fmt: skip


def controller(values: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    rendered = render(RAMP_CHART, values)
    deployment = next(d for d in rendered.of_kind("Deployment") if d["metadata"]["name"].endswith("ramp"))
    return deployment["spec"]["template"], rendered


def test_by_default_no_notifications_and_no_secrets_are_mounted() -> None:
    pod, rendered = controller({})
    args = pod["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--notifications") for a in args)
    assert not [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-notifications")]
    assert all("secret" not in v for v in pod["spec"]["volumes"])


def test_notifications_and_secrets_reach_the_controller_as_it_reads_them(tmp_path: Path) -> None:
    pod, rendered = controller({"notifications": NOTIFICATIONS, "secretMounts": MOUNTS})
    container = pod["spec"]["containers"][0]
    assert "--notifications=/etc/ramp/notifications/notifications.yaml" in container["args"]
    args = build_parser().parse_args(["controller", *[a for a in container["args"] if "$(" not in a]])
    assert str(args.notifications) == "/etc/ramp/notifications/notifications.yaml"
    (configmap,) = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-notifications")]
    file = tmp_path / "notifications.yaml"
    file.write_text(configmap["data"]["notifications.yaml"])
    assert [n.name for n in load_notifications(file)] == ["team-chat", "ops"]  # the controller's own loader
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for mount in MOUNTS:
        volume = volumes[mounts[mount["mountPath"]]["name"]]
        assert mounts[mount["mountPath"]]["readOnly"] is True
        assert volume["secret"] == {"secretName": mount["secretName"], "defaultMode": 0o440}
    assert "checksum/notifications" in pod["metadata"]["annotations"]  # a change restarts the controller


def test_the_schema_refuses_a_mount_outside_etc_ramp() -> None:
    with pytest.raises(Exception, match="mountPath"):
        render(RAMP_CHART, {"secretMounts": [{"secretName": "s", "mountPath": "/var/run"}]})


def test_a_notifications_change_changes_the_checksum() -> None:
    first, _ = controller({"notifications": NOTIFICATIONS})
    second, _ = controller({"notifications": NOTIFICATIONS[:1]})
    checksum = "checksum/notifications"
    assert first["metadata"]["annotations"][checksum] != second["metadata"]["annotations"][checksum]
    assert yaml.safe_dump(first) != yaml.safe_dump(second)
