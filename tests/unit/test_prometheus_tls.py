"""https to Prometheus: the certificate is verified, and the TLS handshake is bounded by the same total deadline."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.analysis.credentials import Credentials
from controller.analysis.prometheus_http import PrometheusError, PrometheusHTTP
from controller.deadline import Deadline
from tests.fakes.prometheus import FakePrometheus, istio, sample, vector

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return str(cert), str(key)


@pytest.fixture
def tls_prom(certificate: tuple[str, str]) -> Iterator[FakePrometheus]:
    with FakePrometheus(tls=certificate, bearer_token="tls-token-1234") as fake:
        yield fake


def test_https_with_a_trusted_certificate(
    tls_prom: FakePrometheus, certificate: tuple[str, str], tmp_path: Path
) -> None:
    rows = [sample(istio("prod", "shop", "v2", response_code="200"), 7)]
    tls_prom.answer("", vector(*rows))
    token = tmp_path / "token"
    token.write_text("tls-token-1234\n")
    client = PrometheusHTTP(
        tls_prom.url,
        credentials=Credentials(bearer_token_file=token),
        tls_context=ssl.create_default_context(cafile=certificate[0]),
    )
    assert client.query("up", Deadline(10)) == rows


def test_an_untrusted_certificate_is_refused(tls_prom: FakePrometheus) -> None:
    with pytest.raises(PrometheusError, match="CERTIFICATE_VERIFY_FAILED"):
        PrometheusHTTP(tls_prom.url).query("up", Deadline(10))
    assert tls_prom.queries == []


def test_a_server_that_never_completes_the_handshake_is_bounded() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        client = PrometheusHTTP(f"https://127.0.0.1:{silent.getsockname()[1]}")
        box: list[str] = []

        def ask() -> None:
            try:
                client.query("up", Deadline(0.5))
            except PrometheusError as exc:
                box.append(str(exc))

        worker = threading.Thread(target=ask, daemon=True)
        worker.start()
        worker.join(60)
    assert box == ["no complete answer within 0.5s"]
