"""Prometheus authentication and secrets: credentials work (and rotate), and never appear in a reason or repr."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.analysis.gates import Verdict, evaluate_gates
from controller.analysis.prometheus import MetricsRequest, PrometheusSource
from controller.analysis.prometheus_auth import add_prometheus_arguments, prometheus_source_from_args
from controller.redact import redact_text, redact_url, url_secrets
from tests.fakes.prometheus import FakePrometheus, Reply, istio, sample, vector
from tests.unit.engine_fixtures import spec

TOKEN = "tok-3f9a7c1e55d2"
PASSWORD = "pw-8c2d9e0b7a41"
REQUEST = MetricsRequest("prod", "shop", 10)
SHOP = spec(
    "service: shop\nnamespace: prod\nversions: [{name: v1, weight: 90}, {name: v2, weight: 10}]\n"
    "target: v2\ngates: [{metric: error_rate, max: 5}]\n"
)


def write(path: Path, text: str) -> Path:
    """Replace the file atomically (a new inode, as a rotated Kubernetes Secret does)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def no_secret(*texts: str, secrets: tuple[str, ...] = (TOKEN, PASSWORD)) -> bool:
    return not any(secret in text for text in texts for secret in secrets)


@pytest.fixture
def bearer_prom() -> Iterator[FakePrometheus]:
    with FakePrometheus(bearer_token=TOKEN) as fake:
        yield fake


@pytest.fixture
def basic_prom() -> Iterator[FakePrometheus]:
    with FakePrometheus(basic_auth=("ramp", PASSWORD)) as fake:
        yield fake


def test_a_bearer_token_file_is_sent(bearer_prom: FakePrometheus, tmp_path: Path) -> None:
    token = write(tmp_path / "token", TOKEN + "\n")
    source = PrometheusSource(bearer_prom.url, bearer_token_file=str(token))
    assert source.fetch([REQUEST])[REQUEST].error is None
    assert bearer_prom.authorizations[-1] == f"Bearer {TOKEN}"


def test_a_rotated_token_is_read_again(bearer_prom: FakePrometheus, tmp_path: Path) -> None:
    token = write(tmp_path / "token", "old-token-value")
    source = PrometheusSource(bearer_prom.url, bearer_token_file=str(token))
    refused = source.fetch([REQUEST])[REQUEST].error
    assert refused is not None and "HTTP 401" in refused and "old-token-value" not in refused
    write(token, TOKEN)
    assert source.fetch([REQUEST])[REQUEST].error is None


def test_a_wrong_token_is_no_data_without_the_token(bearer_prom: FakePrometheus, tmp_path: Path) -> None:
    wrong = "wrong-9d8c7b6a5f4e"
    source = PrometheusSource(bearer_prom.url, bearer_token_file=str(write(tmp_path / "t", wrong)))
    snapshot = source.fetch([REQUEST])[REQUEST]
    report = evaluate_gates(SHOP, ("v1",), snapshot)
    assert report.verdict == Verdict.NO_DATA
    reason = report.reasons(Verdict.NO_DATA)
    assert "gave an unusable answer: HTTP 401: auth: unauthorized" in reason
    assert no_secret(reason, repr(source), secrets=(wrong,))


def test_a_basic_auth_file_is_sent(basic_prom: FakePrometheus, tmp_path: Path) -> None:
    source = PrometheusSource(basic_prom.url, basic_auth_file=str(write(tmp_path / "basic", f"ramp:{PASSWORD}\n")))
    assert source.fetch([REQUEST])[REQUEST].error is None


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (f"ramp {PASSWORD}", "expected user:password"),
        (f":{PASSWORD}", "expected user:password"),
        (f"ramp:{PASSWORD}\nsecond:{PASSWORD}", "expected exactly one non-empty line, found 2"),
        ("", "expected exactly one non-empty line, found 0"),
    ],
)
def test_a_bad_basic_auth_file_names_the_file_not_its_content(
    basic_prom: FakePrometheus, tmp_path: Path, content: str, why: str
) -> None:
    path = write(tmp_path / "basic", content)
    source = PrometheusSource(basic_prom.url, basic_auth_file=str(path))
    error = source.fetch([REQUEST])[REQUEST].error
    assert error == f"Prometheus at {basic_prom.url} did not answer: cannot use the basic-auth file {path}: {why}"
    assert basic_prom.queries == []  # nothing was sent without the credentials


def test_unreadable_credential_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    source = PrometheusSource("http://127.0.0.1:9", bearer_token_file=str(missing))
    error = source.fetch([REQUEST])[REQUEST].error
    assert error is not None and f"cannot use the bearer token file {missing}: No such file or directory" in error
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + TOKEN.encode())
    error = PrometheusSource("http://127.0.0.1:9", bearer_token_file=str(binary)).fetch([REQUEST])[REQUEST].error
    assert error is not None and f"{binary}: not UTF-8 text" in error and no_secret(error)
    control = write(tmp_path / "control", TOKEN + "\x1b[2J")
    error = PrometheusSource("http://127.0.0.1:9", bearer_token_file=str(control)).fetch([REQUEST])[REQUEST].error
    assert error is not None and f"{control}: contains control characters" in error and no_secret(error)


def test_url_credentials_are_sent_as_basic_auth_and_never_shown(basic_prom: FakePrometheus) -> None:
    url = basic_prom.url_with(f"ramp:{PASSWORD}")
    source = PrometheusSource(url)
    assert source.fetch([REQUEST])[REQUEST].error is None
    assert no_secret(repr(source), source.url, str(vars(source).get("url")))
    assert source.url == basic_prom.url_with("***")


def test_a_prometheus_echoing_the_credentials_is_redacted(basic_prom: FakePrometheus) -> None:
    """A hostile or buggy server that quotes our Authorization header back in its error."""

    def echo(query: str) -> Reply:
        said = basic_prom.authorizations[-1]
        return Reply(status=400, body={"status": "error", "errorType": "bad_data", "error": said})

    basic_prom.answer("", echo)
    source = PrometheusSource(basic_prom.url_with(f"ramp:{PASSWORD}"))
    error = source.fetch([REQUEST])[REQUEST].error
    sent = (basic_prom.authorizations[-1] or "").split(" ", 1)[1]
    assert error is not None and "HTTP 400: bad_data: Basic ***" in error
    assert sent not in error and no_secret(error)


def test_a_bad_sample_quoting_the_token_in_a_label_is_redacted(bearer_prom: FakePrometheus, tmp_path: Path) -> None:
    labels = istio("prod", "shop", "v2", response_code="503", pod=f"stolen-{TOKEN}")
    bearer_prom.answer("istio_requests_total", vector(sample(labels, "NaN")))
    source = PrometheusSource(bearer_prom.url, bearer_token_file=str(write(tmp_path / "token", TOKEN)))
    report = evaluate_gates(SHOP, ("v1",), source.fetch([REQUEST])[REQUEST])
    reason = report.reasons(Verdict.NO_DATA)
    assert 'Prometheus returned NaN for istio_requests_total{' in reason and 'pod="stolen-***"' in reason
    assert no_secret(reason)


def test_unreachable_prometheus_with_url_credentials_keeps_them_out_of_the_reason() -> None:
    source = PrometheusSource(f"http://ramp:{PASSWORD}@127.0.0.1:9/prom?token={TOKEN}")
    snapshot = source.fetch([REQUEST])[REQUEST]
    report = evaluate_gates(SHOP, ("v1",), snapshot)
    reason = report.reasons(Verdict.NO_DATA)
    assert reason.startswith("error_rate: Prometheus at http://***@127.0.0.1:9/prom?token=*** did not answer: ")
    assert no_secret(reason, repr(source), source.url)


def test_only_one_way_to_authenticate(tmp_path: Path) -> None:
    token = str(write(tmp_path / "t", TOKEN))
    with pytest.raises(ValueError, match="choose one") as caught:
        PrometheusSource(f"http://ramp:{PASSWORD}@127.0.0.1:9", bearer_token_file=token)
    assert no_secret(str(caught.value))
    with pytest.raises(ValueError, match="choose one"):
        PrometheusSource("http://127.0.0.1:9", bearer_token_file=token, basic_auth_file=token)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ramp run", exit_on_error=False)
    add_prometheus_arguments(parser)
    return parser.parse_args(list(argv))


def test_command_line_options_build_the_source(bearer_prom: FakePrometheus, tmp_path: Path) -> None:
    token = write(tmp_path / "token", TOKEN)
    args = parse("--prometheus", bearer_prom.url, "--prometheus-bearer-token-file", str(token),
                 "--prometheus-timeout", "2.5")
    source = prometheus_source_from_args(args)
    assert source.timeout_seconds == 2.5
    assert source.fetch([REQUEST])[REQUEST].error is None
    assert parse("--prometheus", "http://p:9090").prometheus_timeout == 5.0


@pytest.mark.parametrize(
    "argv",
    [
        ["--prometheus-timeout", "3"],  # --prometheus is required
        ["--prometheus", "http://p", "--prometheus-timeout", "0"],
        ["--prometheus", "http://p", "--prometheus-timeout", "nan"],
        ["--prometheus", "http://p", "--prometheus-timeout", "soon"],
        ["--prometheus", "http://p", "--prometheus-bearer-token-file", "a", "--prometheus-basic-auth-file", "b"],
    ],
)
def test_bad_command_lines_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        parse(*argv)


def test_command_line_errors_name_the_file_or_hide_the_url(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(ValueError, match=f"cannot use the basic-auth file {missing}: No such file"):
        prometheus_source_from_args(
            parse("--prometheus", "http://p:9090", "--prometheus-basic-auth-file", str(missing))
        )
    token = write(tmp_path / "token", TOKEN)
    with pytest.raises(ValueError) as caught:
        prometheus_source_from_args(
            parse("--prometheus", f"http://u:{PASSWORD}@p:9090", "--prometheus-bearer-token-file", str(token))
        )
    assert no_secret(str(caught.value))
    with pytest.raises(ValueError) as caught:
        prometheus_source_from_args(parse("--prometheus", f"ftp://u:{PASSWORD}@p/"))
    assert "ftp://***@p/" in str(caught.value) and no_secret(str(caught.value))


def test_redact_url() -> None:
    assert redact_url(f"http://ramp:{PASSWORD}@prom:9090/x") == "http://***@prom:9090/x"
    assert redact_url(f"https://{TOKEN}@prom/") == "https://***@prom/"
    assert redact_url(f"http://prom/?token={TOKEN}&step=5&api_key=k&Password=p") == (
        "http://prom/?token=***&step=5&api_key=***&Password=***"
    )
    assert redact_url("http://prom:9090") == "http://prom:9090"
    assert redact_url(f"http://[::1:{PASSWORD}@x/") == "http://***@x/"  # unparseable: still no userinfo


def test_redact_text_hides_known_secrets_in_any_encoding() -> None:
    secrets = url_secrets(f"http://ramp:p%40ss%2Fword@prom/?token={TOKEN}")
    text = f"failed: p@ss/word, p%40ss%2Fword, {TOKEN}, see http://x:y@host/"
    redacted = redact_text(text, secrets)
    assert redacted == "failed: ***, ***, ***, see http://***@host/"
    assert redact_text("nothing here", []) == "nothing here"
