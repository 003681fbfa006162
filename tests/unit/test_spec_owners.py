"""One owner per service, and `ramp validate` warnings.

Two spec files for one namespace/service (or one host, or one rollout name) are both refused, by
`ramp validate DIR` (exit 1) and by SpecDirectory (neither becomes a rollout), each problem naming the
other file and line. Warnings print as `file:line: field: warning: reason` and do not fail validate.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from controller import cli_spec
from controller.spec import spec_warnings
from controller.spec_directory import SpecDirectory
from controller.spec_loader import parse_spec_text

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = (REPO_ROOT / "rollout-specs" / "demo.yaml").read_text()  # `service: demo` at line 2
ONE_OWNER = "one spec per service and rollout name; neither file is applied until one is changed or removed"


def validate(*paths: Path) -> int:
    """`ramp validate PATH...` through the command's own parser (independent of the other commands)."""
    parser = argparse.ArgumentParser(prog="ramp")
    cli_spec.register(parser.add_subparsers())
    args = parser.parse_args(["validate", *map(str, paths)])
    result: int = args.handler(args)
    return result


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_two_specs_for_one_service_with_different_names_are_both_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path, "a.yaml", DEMO.replace("service: demo\n", "name: demo-a\nservice: demo\n"))
    b = write(tmp_path, "b.yaml", "# owned twice\n" + DEMO.replace("service: demo\n", "service: demo\nname: demo-b\n"))
    assert validate(tmp_path) == 1
    out, err = capsys.readouterr()
    assert out == ""  # neither is "ok"
    assert err.splitlines() == [
        f"{a}:3: service: service 'default/demo' is also claimed by {b}:3: {ONE_OWNER}",
        f"{b}:3: service: service 'default/demo' is also claimed by {a}:3: {ONE_OWNER}",
    ]
    directory = SpecDirectory(tmp_path)
    assert directory.refresh()
    assert directory.rollouts == []
    assert [str(p) for p in directory.problems] == err.splitlines()


def test_two_specs_with_one_rollout_name_are_both_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path, "a.yaml", DEMO.replace("service: demo\n", "name: shared\nservice: demo\n"))
    b = write(tmp_path, "b.yaml", DEMO.replace("service: demo\n", "name: shared\nservice: other\n"))
    c = write(tmp_path, "c.yaml", DEMO.replace("service: demo\n", "service: third\n"))
    assert validate(tmp_path) == 1
    out, err = capsys.readouterr()
    assert out == f"ok  {c} (rollout third: 4 steps)\n"
    assert err.splitlines() == [
        f"{a}:2: name: rollout name 'shared' is also claimed by {b}:2: {ONE_OWNER}",
        f"{b}:2: name: rollout name 'shared' is also claimed by {a}:2: {ONE_OWNER}",
    ]
    directory = SpecDirectory(tmp_path)
    directory.refresh()
    assert [r.name for r in directory.rollouts] == ["third"]


def test_a_spec_routing_another_services_host_is_a_clash(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", DEMO)
    other = DEMO.replace("service: demo\n", "service: other\nhost: demo.default.svc.cluster.local\n")
    b = write(tmp_path, "b.yaml", other)
    directory = SpecDirectory(tmp_path)
    directory.refresh()
    assert directory.rollouts == []
    assert [(Path(p.file).name, p.line, p.path) for p in directory.problems] == [("a.yaml", 2, "service"),
                                                                                ("b.yaml", 3, "host")]
    assert f"host 'demo.default.svc.cluster.local' is also claimed by {b}:3" in directory.problems[0].reason
    short = DEMO.replace("service: demo\n", "service: other\nhost: demo\n")  # Istio: demo.default.svc...
    write(tmp_path, "b.yaml", short)
    os.utime(b, ns=(2, 2))
    assert directory.refresh() and directory.rollouts == []
    assert [(Path(p.file).name, p.line, p.path) for p in directory.problems] == [("a.yaml", 2, "service"),
                                                                                ("b.yaml", 3, "host")]


def test_the_same_service_in_two_directories_given_to_validate_is_a_clash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "team-a").mkdir()
    (tmp_path / "team-b").mkdir()
    a = write(tmp_path / "team-a", "demo.yaml", DEMO)
    b = write(tmp_path / "team-b", "demo.yaml", DEMO)
    assert validate(tmp_path / "team-a", tmp_path / "team-b") == 1
    assert f"{a}:2: service: service 'default/demo' is also claimed by {b}:2" in capsys.readouterr().err
    assert validate(a, a) == 0  # one file named twice is not a clash with itself


def test_three_way_clash_names_every_other_file(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml", "c.yaml"):
        write(tmp_path, name, DEMO)
    directory = SpecDirectory(tmp_path)
    directory.refresh()
    assert directory.rollouts == []
    pairs = [(Path(p.file).name, p.reason.split(" is also claimed by ")[1].split(":")[0]) for p in directory.problems]
    assert pairs == [
        ("a.yaml", str(tmp_path / "b.yaml")), ("a.yaml", str(tmp_path / "c.yaml")),
        ("b.yaml", str(tmp_path / "a.yaml")), ("b.yaml", str(tmp_path / "c.yaml")),
        ("c.yaml", str(tmp_path / "a.yaml")), ("c.yaml", str(tmp_path / "b.yaml")),
    ]  # fmt: skip


def test_the_clash_report_is_stable_across_re_reads_and_clears_when_resolved(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", DEMO)
    b = write(tmp_path, "b.yaml", DEMO)
    directory = SpecDirectory(tmp_path)
    directory.refresh()
    first = list(directory.problems)
    assert len(first) == 2 and directory.rollouts == []
    write(tmp_path, "c.yaml", DEMO.replace("service: demo", "service: unrelated"))
    os.utime(b, ns=(1, 1))  # b.yaml touched, unchanged
    assert directory.refresh()
    assert directory.problems == first
    assert [r.name for r in directory.rollouts] == ["unrelated"]
    assert not directory.refresh() and directory.problems == first
    b.unlink()
    assert directory.refresh()
    assert directory.problems == []
    assert sorted(r.name for r in directory.rollouts) == ["demo", "unrelated"]


def test_an_invalid_file_does_not_clash(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", DEMO)
    write(tmp_path, "b.yaml", DEMO.replace("weight: 10\n", "weight: -10\n"))
    directory = SpecDirectory(tmp_path)
    directory.refresh()
    assert [r.name for r in directory.rollouts] == ["demo"]
    assert [(Path(p.file).name, p.path) for p in directory.problems] == [("b.yaml", "steps.1.weight")]


# --- warnings --------------------------------------------------------------------------------------

STATISTICAL_ONLY = """\
service: shop
versions:
  - {name: v1, weight: 100}
  - {name: v2, weight: 0}
target: v2
steps:
  - weight: 10
  - weight: 100
gates:
  - {name: errors, metric: error_rate, mode: statistical}
  - {name: slow, metric: latency, mode: statistical, max: 300}
"""
NO_STABLE = (
    "'v2' gets 100% here but every gate compares it with the stable versions (statistical, or stable_margin "
    "without max): with no stable traffic they give no data, so this step holds (and rolls back after "
    "missing_data_timeout); give a gate a max"
)


def test_spec_warnings_flags_a_100_percent_step_with_only_comparative_gates() -> None:
    assert spec_warnings(parse_spec_text(STATISTICAL_ONLY, "s.yaml")) == [(("steps", 1, "weight"), NO_STABLE)]
    traffic = STATISTICAL_ONLY.replace("  - weight: 100\n", "  - traffic: {v1: 0, v2: 3}\n")
    assert spec_warnings(parse_spec_text(traffic, "s.yaml")) == [(("steps", 1, "traffic"), NO_STABLE)]
    margin_only = STATISTICAL_ONLY.replace(
        "gates:\n  - {name: errors, metric: error_rate, mode: statistical}\n",
        "gates:\n  - {metric: error_rate, stable_margin: 1}\n",
    )
    assert len(spec_warnings(parse_spec_text(margin_only, "s.yaml"))) == 1
    guarded = STATISTICAL_ONLY.replace("mode: statistical}", "mode: both, max: 5}")
    assert spec_warnings(parse_spec_text(guarded, "s.yaml")) == []
    no_full_step = STATISTICAL_ONLY.replace("  - weight: 100\n", "  - weight: 50\n")
    assert spec_warnings(parse_spec_text(no_full_step, "s.yaml")) == []
    default_steps = STATISTICAL_ONLY.replace("steps:\n  - weight: 10\n  - weight: 100\n", "")
    assert spec_warnings(parse_spec_text(default_steps, "s.yaml")) == [
        (("gates",), NO_STABLE.replace("100% here", "100% at default step 3"))
    ]


def test_validate_prints_warnings_and_still_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "stat.yaml", STATISTICAL_ONLY)
    assert validate(path) == 0
    out, err = capsys.readouterr()
    assert out == f"ok  {path} (rollout shop: 2 steps)\n"
    assert err == f"{path}:8: steps.1.weight: warning: {NO_STABLE}\n"


def test_the_example_specs_have_no_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    assert validate(REPO_ROOT / "rollout-specs") == 0
    out, err = capsys.readouterr()
    assert err == ""
    examples = [*(REPO_ROOT / "rollout-specs").glob("*.yaml"), *(REPO_ROOT / "rollout-specs").glob("*.yml")]
    assert len(out.splitlines()) == len(examples)  # rollouts and metric templates alike
