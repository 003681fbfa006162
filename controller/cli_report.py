"""`ramp report`: one self-contained HTML file showing what a rollout did (controller.report).

    ramp report --state-dir DIR [--rollout NAME] -o report.html           local (`ramp run`, `ramp demo`)
    ramp report SERVICE -n NAMESPACE --prometheus URL -o report.html      cluster: state + Prometheus ranges

Exit codes: 0 written; 1 nothing to report (no such rollout, unreadable source) or not writable; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from controller.cli_common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, kube_flags, printable

if TYPE_CHECKING:
    from controller.report.model import ReportInputs

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

REPORT_DEADLINE = 60.0  # the whole cluster read (Kubernetes + every Prometheus range query)


def _window(text: str) -> float:
    from controller.spec_rules import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 1.0 <= seconds <= 31 * 86400:
        raise argparse.ArgumentTypeError(f"{text}: between 1s and 31 days")
    return seconds


def register(subparsers: Subparsers) -> None:
    report = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a rollout (weights, gates, e-values, phases)",
        epilog="exit codes: 0 written; 1 nothing to report or not writable; 2 bad arguments",
    )  # fmt: skip
    report.add_argument("service", nargs="?", help="cluster mode: the rollout's service")
    kube_flags(report)
    report.add_argument("--state-dir", type=Path, help="local mode: the state directory of `ramp run`/`ramp demo`")
    report.add_argument("--rollout", help="local mode: the rollout (needed when the directory has several)")
    report.add_argument("-o", "--output", type=Path, required=True, metavar="PATH", help="the HTML file to write")
    cluster = report.add_argument_group("cluster mode")
    cluster.add_argument("--prometheus", metavar="URL", help="Prometheus base URL (user:password@ is never shown)")
    cluster.add_argument("--prometheus-bearer-token-file", metavar="PATH")
    cluster.add_argument("--prometheus-basic-auth-file", metavar="PATH")
    cluster.add_argument(
        "--spec", type=Path, metavar="FILE",
        help="the rollout's spec file: names its steps and the direction of custom gates' margins",
    )  # fmt: skip
    cluster.add_argument(
        "--window", type=_window, metavar="DURATION",
        help="how far back to look (e.g. 2h); default: from the rollout's first recorded phase change",
    )  # fmt: skip
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from controller.report.local_source import ReportSourceError, local_report_inputs
    from controller.report.write import ReportPathError, overwrite_problem, write_report
    from controller.spec_loader import SpecError

    if (args.state_dir is None) == (args.service is None):
        print("ramp report: give either --state-dir (local) or a SERVICE (cluster)", file=sys.stderr)
        return EXIT_USAGE
    problem = overwrite_problem(args.output.expanduser().resolve())
    if problem is not None:  # said before any source is read
        print(f"ramp report: {args.output}: {printable(problem)}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        if args.state_dir is not None:
            inputs = local_report_inputs(args.state_dir, args.rollout)
        else:
            if args.prometheus is None:
                print("ramp report: cluster mode needs --prometheus URL (the range queries)", file=sys.stderr)
                return EXIT_USAGE
            inputs = _cluster_inputs(args)
    except (ReportSourceError, SpecError, ValueError) as exc:
        print(f"ramp report: {printable(str(exc), 1000)}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        path = write_report(inputs, args.output)
    except ReportPathError as exc:
        print(f"ramp report: {printable(str(exc), 1000)}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(f"ramp report: {args.output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(path)
    for note in inputs.notes:
        print(f"note: {printable(note, 500)}", file=sys.stderr)
    return EXIT_OK


def _cluster_inputs(args: argparse.Namespace) -> ReportInputs:
    from controller.analysis.credentials import Credentials
    from controller.analysis.prometheus_http import PrometheusHTTP
    from controller.cli_common import kube_api
    from controller.deadline import Deadline
    from controller.redact import redact_url
    from controller.report.cluster_source import cluster_report_inputs
    from controller.spec_loader import load_spec

    spec = None if args.spec is None else load_spec(args.spec)
    token, basic = args.prometheus_bearer_token_file, args.prometheus_basic_auth_file
    if token is not None and basic is not None:
        raise ValueError("choose one of --prometheus-bearer-token-file and --prometheus-basic-auth-file")
    credentials = None if token is None and basic is None else Credentials(bearer_token_file=token,
                                                                           basic_auth_file=basic)
    try:
        prometheus = PrometheusHTTP(args.prometheus, credentials=credentials)
    except ValueError as exc:
        raise ValueError(str(exc).replace(args.prometheus, redact_url(args.prometheus))) from None
    return cluster_report_inputs(
        kube_api(args), args.namespace, args.service, prometheus,
        window=args.window, now=time.time(), deadline=Deadline(REPORT_DEADLINE), spec=spec,
    )  # fmt: skip
