"""`ramp resource FILE...`: print spec files as RampRollout resources, ready for `kubectl apply -f -`.

Each file is validated first (exactly as `ramp validate`); nothing is printed unless every file is valid,
so a pipe into kubectl never applies half a set. A file already in resource form is printed as it is
(normalised). `name` and `namespace` move to `metadata`; everything else goes under `spec` unchanged, so
defaults stay the model's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from controller.rollout_resource import is_resource, resource_from_spec_data
from controller.spec_loader import SpecError, load_spec_located, spec_files

if TYPE_CHECKING:
    from controller.cli import Subparsers


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "resource",
        help="print spec files as RampRollout resources (for kubectl apply -f -)",
        description="Validate spec files and print each as a RampRollout custom resource (a YAML stream).",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="spec files or directories")
    parser.set_defaults(handler=run_resource)


def as_resource(path: Path) -> dict[str, Any]:
    """The RampRollout for one valid spec file (SpecError when it is not valid)."""
    load_spec_located(path)  # every problem, with file:line, before anything is printed
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if is_resource(data):
        return dict(data)
    return resource_from_spec_data(data)


def run_resource(args: argparse.Namespace) -> int:
    files = spec_files(list(args.paths))
    if not files:
        print("ramp resource: no spec files found", file=sys.stderr)
        return 2
    resources: list[dict[str, Any]] = []
    failed = False
    for path in files:
        try:
            resources.append(as_resource(path))
        except SpecError as exc:
            failed = True
            for problem in exc.problems:
                print(problem, file=sys.stderr)
    if failed:
        return 1
    sys.stdout.write(yaml.safe_dump_all(resources, sort_keys=False))
    return 0
