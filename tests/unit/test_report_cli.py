"""`ramp report`'s cluster-mode arguments: refused with a clear message, credentials never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main
from tests.unit.test_report_local import run_rollout


def test_bad_prometheus_arguments_are_refused_without_showing_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.html"
    base = ["report", "shop", "--kubeconfig", str(tmp_path / "absent"), "-o", str(out)]
    assert main([*base, "--prometheus", "ftp://user:s3cret@prom"]) == 1
    err = capsys.readouterr().err
    assert "Prometheus URL must be http(s)://" in err and "s3cret" not in err and "ftp://***@prom" in err
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    assert main([*base, "--prometheus", "http://user:s3cret@127.0.0.1:1", "--prometheus-bearer-token-file",
                 str(token)]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "choose one Prometheus authentication" in err and "s3cret" not in err and "t0ken" not in err
    (tmp_path / "bad.yaml").write_text("service: [unclosed\n")
    assert main([*base, "--prometheus", "http://127.0.0.1:1", "--spec", str(tmp_path / "bad.yaml")]) == 1
    assert "bad.yaml" in capsys.readouterr().err
    assert not out.exists()  # nothing written on any refusal


def test_a_demo_report_path_that_cannot_be_written_is_refused_before_the_demo_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["demo", "--report", str(tmp_path)]) == 2
    assert f"--report {tmp_path}: is a directory" in capsys.readouterr().err
    assert main(["demo", "--report", str(blocker / "sub" / "r.html")]) == 2
    assert f"{blocker} is not a directory" in capsys.readouterr().err


def test_a_report_never_replaces_a_file_that_is_not_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_rollout(tmp_path / "state", ticks=3)
    capsys.readouterr()
    timeline = tmp_path / "state" / "shop.timeline.jsonl"
    before = timeline.read_bytes()
    for precious in (timeline, tmp_path / "state" / "shop.state.json"):
        kept = precious.read_bytes()
        assert main(["report", "--state-dir", str(tmp_path / "state"), "-o", str(precious)]) == 1
        err = capsys.readouterr().err
        assert "exists and is not a Ramp report: choose another path (it is never overwritten)" in err
        assert precious.read_bytes() == kept
    assert timeline.read_bytes() == before
    report = tmp_path / "report.html"
    for _ in range(2):  # an earlier report is replaced
        assert main(["report", "--state-dir", str(tmp_path / "state"), "-o", str(report)]) == 0
    assert main(["demo", "--report", str(timeline)]) == 2  # refused before any stack starts
    assert "is not a Ramp report" in capsys.readouterr().err
