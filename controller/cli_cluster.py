"""Cluster command: `ramp controller` (the people's commands live in cli_status, cli_commands and cli_ping).

It talks to the cluster through kubeconfig (or in-cluster config).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(subparsers: Subparsers) -> None:
    from controller.analysis.prometheus_auth import add_prometheus_arguments
    from controller.cli_run import add_loop_arguments, add_notifications_argument

    ctl = subparsers.add_parser("controller", help="run the controller in a cluster (Istio + leader election)")
    ctl.add_argument("--specs", type=Path, required=True, help="directory of rollout specs (e.g. a ConfigMap)")
    add_prometheus_arguments(ctl)
    ctl.add_argument("--namespaces", default="", help="comma-separated namespaces to manage (default: all)")
    ctl.add_argument("--no-resources", action="store_true",
                     help="do not watch RampRollout custom resources (spec directory only; the CRD need not exist)")
    ctl.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "ramp-system"))
    ctl.add_argument("--lease-name", default="ramp-controller")
    ctl.add_argument("--identity", default=os.environ.get("POD_NAME", ""), help="leader election identity")
    ctl.add_argument("--shards", type=_shard_count, default=1, metavar="N",
                     help="split the rollouts over N shards, one Lease each (<lease-name>-shard-<i>-of-<N>), so up "
                          "to N replicas act at once; 1 (default): one leader Lease named --lease-name")
    add_loop_arguments(ctl, default_listen="0.0.0.0:8080")
    add_notifications_argument(ctl)
    ctl.add_argument("--kubeconfig")
    ctl.add_argument("--context")
    ctl.set_defaults(handler=_controller)


def _shard_count(text: str) -> int:
    from controller.sharding import MAX_SHARDS

    try:
        shards = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shards must be an integer from 1 to {MAX_SHARDS}, got {text!r}") from None
    if not 1 <= shards <= MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"--shards must be from 1 to {MAX_SHARDS}, got {shards}")
    return shards


def _api(args: argparse.Namespace) -> ApiClient:
    from controller.k8s.client import load_api_client

    return load_api_client(args.kubeconfig, args.context)


def _controller(args: argparse.Namespace) -> int:
    from controller.cluster_controller import run_controller_from_args

    return run_controller_from_args(args)
