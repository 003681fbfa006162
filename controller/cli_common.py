"""What the people's commands share: exit codes, kubeconfig flags, weight arguments, request ids.

Exit codes of `ramp pause|resume|abort|promote|set-weights|status|ping` (also in their --help):
0 done (applied, or queued with --no-wait); 1 refused or failed (the reason on stderr);
2 bad arguments; 3 still queued: the controller did not pick the command up in time.
"""

from __future__ import annotations

import argparse
import getpass
import re
import secrets
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.k8s.client import KubeApi

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_QUEUED = 0, 1, 2, 3
EXIT_CODES_HELP = (
    "exit codes: 0 applied (or queued, with --no-wait); 1 refused or failed, the reason on stderr; "
    "2 bad arguments; 3 still queued: the controller has not ticked within --wait"
)

# A version is a subset name and a Kubernetes label value: a DNS label (RFC 1123), as in the spec.
VERSION_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
MAX_RELATIVE_WEIGHT = 1_000_000
MAX_VERSIONS = 32
# How long one Kubernetes request of a CLI command may take in total (the client's deadline per call).
CLI_REQUEST_TIMEOUT = 5.0


def kube_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context")


def kube_api(args: argparse.Namespace, request_timeout: float = CLI_REQUEST_TIMEOUT) -> KubeApi:
    """The user's credentials (kubeconfig or in-cluster), every request bounded by `request_timeout` in total."""
    from controller.k8s.client import KubeApi, load_api_client

    return KubeApi(load_api_client(args.kubeconfig, args.context), request_timeout=request_timeout)


def parse_weights(items: list[str]) -> dict[str, int]:
    """`VERSION=WEIGHT` arguments; ValueError naming the first bad one. The sum may be 0: an edit can retire
    one version alone (`v2=0`); whether traffic is left is checked once merged with the current weights."""
    weights: dict[str, int] = {}
    if len(items) > MAX_VERSIONS:
        raise ValueError(f"at most {MAX_VERSIONS} versions at once")
    for item in items:
        version, sep, number = item.partition("=")
        shown = item if len(item) <= 80 else item[:77] + "..."
        if not sep:
            raise ValueError(f"{shown!r}: expected VERSION=WEIGHT, e.g. v2=50")
        if not VERSION_PATTERN.fullmatch(version):
            raise ValueError(
                f"{shown!r}: version {version[:80]!r} is not a valid name (a DNS label: lowercase letters, digits "
                "and '-', at most 63, starting and ending with a letter or digit)"
            )
        if not (number.isascii() and number.isdigit()) or int(number) > MAX_RELATIVE_WEIGHT:
            raise ValueError(f"{shown!r}: the weight must be a whole number from 0 to {MAX_RELATIVE_WEIGHT}")
        if version in weights:
            raise ValueError(f"{shown!r}: version {version} is given twice")
        weights[version] = int(number)
    return weights


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: object, limit: int = 500) -> str:
    """Text from outside (state, annotations, answers) made safe for a terminal: control characters (escape
    sequences, bidi overrides) shown as `?`, at most `limit` characters."""
    shown = _CONTROL.sub("?", str(text))
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def new_request_id() -> str:
    """A fresh command id: time-ordered, unique enough to recognise this command's outcome."""
    return f"{int(time.time())}-{secrets.token_hex(4)}"


def requester() -> str:
    try:
        return getpass.getuser()[:64]
    except (OSError, KeyError):
        return ""
