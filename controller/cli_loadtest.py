"""`ramp loadtest`: the load tester server that a pre-step hook starts (controller/loadtest/).

The caps are the server's, not the caller's: whoever can reach the port (and, with --secret-file, sign) can ask
for load only within them, so they bound what a misconfigured or hostile hook can make this pod send.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
        return value

    return parse


def _duration(text: str) -> float:
    from controller.spec_rules import parse_duration

    try:
        seconds = parse_duration(text, maximum=24 * 3600)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return seconds


def register(subparsers: Subparsers) -> None:
    from controller.http_endpoints import listen_address_type

    parser = subparsers.add_parser(
        "loadtest", help="serve the load tester a pre-step hook starts: bounded load carrying the header",
        description="POST /start with a Ramp hook payload (metadata: url, rps, duration, header, host, method, "
        "concurrency, timeout, requests) starts a bounded run; GET /runs, POST /stop, /healthz, /readyz, /metrics.",
    )  # fmt: skip
    parser.add_argument("--listen", type=listen_address_type, default=("0.0.0.0", 8080), metavar="HOST:PORT",
                        help="where to listen (default 0.0.0.0:8080)")  # fmt: skip
    parser.add_argument("--secret-file", help="HMAC-SHA256 secret: every POST must carry X-Ramp-Signature-256")
    parser.add_argument("--max-rps", type=_positive(float), default=100.0, help="requests/s of one run (100)")
    parser.add_argument("--max-duration", type=_duration, default=600.0, help="length of one run (10m)")
    parser.add_argument("--max-concurrency", type=_positive(int), default=16, help="workers of one run (16)")
    parser.add_argument("--max-runs", type=_positive(int), default=4, help="runs at once; beyond: 429 (4)")
    parser.add_argument("--max-timeout", type=_duration, default=30.0, help="per-request timeout (30s)")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import structlog

    from controller.analysis.credentials import CredentialError, CredentialFile
    from controller.loadtest.request import Caps
    from controller.loadtest.server import LoadTestServer
    from controller.loadtest.tester import LoadTester
    from controller.observability import configure_logging

    configure_logging(level="info")
    caps = Caps(max_rps=args.max_rps, max_duration=args.max_duration, max_concurrency=args.max_concurrency,
                max_runs=args.max_runs, max_timeout=args.max_timeout)  # fmt: skip
    secret = None
    if args.secret_file:
        secret = CredentialFile(args.secret_file, "load tester secret")
        try:
            secret.read()
        except CredentialError as exc:
            print(f"ramp loadtest: {exc}", file=sys.stderr)
            return 1
    tester = LoadTester(caps)
    host, port = args.listen
    try:
        server = LoadTestServer(tester, host, port, secret=secret)
    except OSError as exc:
        print(f"ramp loadtest: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    server.start()
    structlog.get_logger("ramp.loadtest").info(
        "load tester listening", host=host, port=server.port, signed=secret is not None, max_rps=caps.max_rps,
        max_duration=caps.max_duration, max_concurrency=caps.max_concurrency, max_runs=caps.max_runs,
    )  # fmt: skip
    print(f"ramp loadtest: listening on {host}:{server.port}", flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
        tester.close()
    return 0
