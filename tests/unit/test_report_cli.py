"""`ramp report`'s cluster-mode arguments: refused with a clear message, credentials never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main


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
