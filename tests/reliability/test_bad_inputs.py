"""Bad inputs next to a good spec: each is reported clearly (file, line, field, reason); only the good
spec is ever applied; nothing hangs, crashes or half-applies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.analysis.metrics import VersionMetrics
from controller.cli import main
from controller.engine.runner import RolloutRunner
from controller.spec_directory import SpecDirectory
from controller.spec_loader import MAX_SPEC_BYTES
from controller.state.file_store import FileStateStore
from tests.unit.engine_fixtures import FakeClock, FixedMetrics, RecordingRouter

GOOD = (Path(__file__).resolve().parents[2] / "rollout-specs" / "demo.yaml").read_text()

BAD_FILES: dict[str, tuple[str | bytes, str]] = {
    "malformed.yaml": ("service: demo\nversions: [\n  {name: v1\n", "invalid YAML"),
    "huge.yaml": ("# " + "x" * (MAX_SPEC_BYTES + 10) + "\n", f"file larger than {MAX_SPEC_BYTES} bytes"),
    "types.yaml": (GOOD.replace("service: demo", "service: wrong-types").replace("weight: 10\n", "weight: ten\n"),
                   "steps.1.weight: Input should be a valid integer"),
    "unknown-version.yaml": (GOOD.replace("service: demo", "service: unknown").replace("target: v2", "target: v9"),
                             "target: unknown version 'v9': not listed in versions"),
    "foreign-namespace.yaml": (GOOD.replace("service: demo", "service: intruder")
                               .replace("namespace: default", "namespace: kube-system"),
                               "namespace: namespace 'kube-system' is not managed by this controller"),
    "binary.yaml": (b"\xff\xfe\x00garbage\x00", "file is not UTF-8 text"),
    "list.yaml": ("- service: demo\n", "a rollout spec must be a mapping of fields"),
    "empty.yaml": ("", "expected exactly one YAML document, found 0"),
    "no-gates.yaml": (GOOD.replace("service: demo", "service: ungated").split("gates:")[0]
                      + "gates: []\nschedule:" + GOOD.split("schedule:")[1], "gates: no gates"),
    "wildcard-host.yaml": (GOOD.replace("service: demo", "service: wildcard\nhost: '*'"),
                           "host: host '*' has a wildcard"),
    "match-all-header.yaml": (GOOD.replace("service: demo", "service: everyone").replace(
        "{name: x-version, value: v2}", "{name: user-agent, value: '.*', match: regex}"),
        "steps.0.header.value: regex '.*' matches every value"),
    "crlf-header.yaml": (GOOD.replace("service: demo", "service: smuggle").replace(
        "{name: x-version, value: v2}", '{name: x-version, value: "v2\\r\\nx-admin: 1"}'),
        "steps.0.header.value: header value has a control character ('\\r')"),
    "busy-loop.yaml": (GOOD.replace("service: demo", "service: busy").replace("interval: 2s", "interval: 0"),
                       "schedule.interval: duration 0s is below the minimum of 100ms"),
    "clash-a.yaml": (GOOD.replace("service: demo", "name: twin-a\nservice: twin"),
                     "service: service 'default/twin' is also claimed by"),
    "clash-b.yaml": (GOOD.replace("service: demo", "name: twin-b\nservice: twin"),
                     "service: service 'default/twin' is also claimed by"),
}


def write_bad_files(directory: Path) -> None:
    for name, (content, _) in BAD_FILES.items():
        path = directory / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    os.symlink("/dev/zero", directory / "endless.yaml")  # a never-ending file: refused, not read
    os.mkfifo(directory / "fifo.yaml")  # reading would block forever


def test_bad_specs_are_reported_and_never_applied(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "good.yaml").write_text(GOOD)
    write_bad_files(specs)
    directory = SpecDirectory(specs, allowed_namespaces=frozenset({"default"}))
    directory.refresh()
    router = RecordingRouter()
    runner = RolloutRunner(router, FixedMetrics({"v2": VersionMetrics(100)}), FileStateStore(tmp_path / "state"),
                           clock=FakeClock())
    runner.set_rollouts(directory.rollouts)
    runner.tick()
    assert [r.name for r in directory.rollouts] == ["demo"]
    assert {r.service for r in router.applied} == {"demo"}
    messages = [str(p) for p in directory.problems]
    for name, (_, reason) in BAD_FILES.items():
        assert any(m.startswith(f"{specs / name}:") and reason in m for m in messages), (name, messages)
    assert not any("endless.yaml" in m or "fifo.yaml" in m for m in messages)  # not spec files: skipped


def test_validate_names_every_bad_file_and_refuses_special_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_bad_files(tmp_path)
    paths = [str(tmp_path / name) for name in [*BAD_FILES, "endless.yaml", "fifo.yaml"]]
    assert main(["validate", *paths]) == 1
    err = capsys.readouterr().err
    for name, (_, reason) in BAD_FILES.items():
        if name != "foreign-namespace.yaml":  # validate has no namespace policy; the controller does
            assert f"{tmp_path / name}:" in err and reason in err, name
    assert f"{tmp_path / 'endless.yaml'}:1: (document): not a regular file" in err
    assert f"{tmp_path / 'fifo.yaml'}:1: (document): not a regular file" in err
