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
