"""Command-line options for reaching Prometheus, shared by `ramp run` and `ramp controller`.

    --prometheus URL                        required; `user:password@` in it is sent as basic auth, shown as ***
    --prometheus-bearer-token-file PATH     one line: the token (re-read when the file changes)
    --prometheus-basic-auth-file PATH       one line: user:password (re-read when the file changes)
    --prometheus-timeout SECONDS            total time allowed per query (default 5)

At most one way to authenticate. The files are checked at start-up (an error names the file, never its
content) and re-read whenever they change, so a rotated Kubernetes Secret is picked up.
"""

from __future__ import annotations

import argparse
import math

from controller.analysis.prometheus import DEFAULT_TIMEOUT, PrometheusSource
from controller.analysis.prometheus_http import PrometheusError
from controller.redact import redact_url


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0 or value > 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600 seconds, got {text!r}")
    return value


def add_prometheus_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Prometheus")
    group.add_argument(
        "--prometheus",
        required=True,
        metavar="URL",
        help="Prometheus base URL; user:password@ in it is sent as basic auth and never shown",
    )
    auth = group.add_mutually_exclusive_group()
    auth.add_argument(
        "--prometheus-bearer-token-file",
        metavar="PATH",
        help="file holding a bearer token on one line (re-read when it changes)",
    )
    auth.add_argument(
        "--prometheus-basic-auth-file",
        metavar="PATH",
        help="file holding user:password on one line (re-read when it changes)",
    )
    group.add_argument(
        "--prometheus-timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"total time allowed per Prometheus query, answer included (default {DEFAULT_TIMEOUT:g})",
    )


def prometheus_source_from_args(args: argparse.Namespace) -> PrometheusSource:
    """The PrometheusSource the options describe; ValueError (safe to print) when they cannot work."""
    try:
        source = PrometheusSource(
            args.prometheus,
            timeout_seconds=args.prometheus_timeout,
            bearer_token_file=args.prometheus_bearer_token_file,
            basic_auth_file=args.prometheus_basic_auth_file,
        )
    except ValueError as exc:
        raise ValueError(str(exc).replace(args.prometheus, redact_url(args.prometheus))) from None
    try:
        source.check_credentials()
    except PrometheusError as exc:
        raise ValueError(str(exc)) from None
    return source
