"""Spec commands: `ramp validate`, `ramp schema`, `ramp crd`, `ramp plan`.

Problems are printed as `file:line: field.path: reason`, one per line, on stderr;
warnings as `file:line: field.path: warning: reason`; results go to stdout. Exit code
0 = everything valid (warnings allowed), 1 = any problem, including two specs for one
service or rollout name.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from controller.cluster_backend import ROUTERS
from controller.engine.routing_model import DesiredRouting
from controller.plan import Plan, build_plan
from controller.resource_crd import crd_yaml
from controller.routing.crd_schema import CRD_ENV_VAR, IstioSchemas, RouteSchemas
from controller.spec import RolloutSpec
from controller.spec_loader import LocatedSpec, SpecError, SpecProblem, load_spec, load_spec_located, spec_files
from controller.spec_metrics import TemplateSet, load_templates
from controller.spec_owners import without_clashes

if TYPE_CHECKING:
    from controller.cli import Subparsers


def register(subparsers: Subparsers) -> None:
    validate = subparsers.add_parser(
        "validate",
        help="check rollout spec files",
        description="Check rollout specs; print every problem as file:line: field.path: reason.",
    )
    validate.add_argument("paths", nargs="+", metavar="PATH", help="spec file, or directory of *.yaml/*.yml")
    validate.set_defaults(handler=run_validate)

    schema = subparsers.add_parser(
        "schema", help="print the rollout spec JSON Schema", description="Print the RolloutSpec JSON Schema."
    )
    schema.set_defaults(handler=run_schema)

    crd = subparsers.add_parser(
        "crd",
        help="print the RampRollout CustomResourceDefinition",
        description=(
            "Print the RampRollout CRD (YAML), generated from the rollout spec model: the file the chart ships "
            "in charts/ramp/crds/, and a plain manifest for kubectl apply -f -."
        ),
    )
    crd.set_defaults(handler=run_crd)

    plan = subparsers.add_parser(
        "plan",
        help="print the Istio manifests of every state of a rollout",
        description=(
            "Print the VirtualService and DestinationRule Ramp would apply for the baseline (rollback "
            "target), every step and the promoted state, validated against Istio's CRDs when available."
        ),
    )
    plan.add_argument("spec", metavar="SPEC", help="rollout spec file")
    plan.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml", help="default: yaml")
    plan.add_argument(
        "--crds",
        metavar="PATH",
        help=f"Istio networking CRD file (default: ${CRD_ENV_VAR}, else the copy shipped with Ramp)",
    )
    plan.set_defaults(handler=run_plan)


def _err(line: str) -> None:
    print(line, file=sys.stderr)


def _print_problems(problems: list[SpecProblem]) -> None:
    for problem in problems:
        _err(str(problem))


def expand_path(arg: str) -> tuple[list[Path], list[SpecProblem]]:
    """Spec files named by one argument, or a problem for a missing path or a directory without specs."""
    path = Path(arg)
    if path.is_dir():
        found = spec_files([path])
        if not found:
            return [], [SpecProblem(arg, 1, "", "directory has no *.yaml or *.yml spec files")]
        return found, []
    if not path.exists():
        return [], [SpecProblem(arg, 1, "", "no such file or directory")]
    return [path], []


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _warning_line(warning: SpecProblem) -> str:
    return f"{warning.file}:{warning.line}: {warning.path or '(document)'}: warning: {warning.reason}"


def run_validate(args: argparse.Namespace) -> int:
    """Every problem, then the specs that clash over a service, host or rollout name; warnings never fail.

    MetricTemplate files are checked as templates; a spec's `template:` gates resolve against the
    templates of its own directory (named on the command line or not)."""
    failed = False
    loaded: list[LocatedSpec] = []
    seen: set[Path] = set()
    template_sets: dict[Path, TemplateSet] = {}
    order: dict[str, int] = {}  # file -> position on the command line, for the ok lines
    template_ok: list[tuple[str, str]] = []
    for arg in args.paths:
        files, problems = expand_path(arg)
        _print_problems(problems)
        failed = failed or bool(problems)
        for path in files:
            if path.resolve() in seen:  # the same file named twice is not a clash with itself
                continue
            seen.add(path.resolve())
            order[str(path)] = len(order)
            directory = path.parent.resolve()
            if directory not in template_sets:
                template_sets[directory] = load_templates(path.parent)
            templates = template_sets[directory]
            if path.resolve() in {Path(f).resolve() for f in templates.files}:
                mine = [p for p in templates.problems if Path(p.file).resolve() == path.resolve()]
                _print_problems(mine)
                failed = failed or bool(mine)
                here = path.resolve()
                names = [t.template.name for t in templates.catalog.values() if Path(t.file).resolve() == here]
                template_ok.extend((str(path), f"ok  {path} (metric template {name})") for name in names if not mine)
                continue
            try:
                loaded.append(load_spec_located(path, templates=templates.catalog))
            except SpecError as exc:
                _print_problems(exc.problems)
                failed = True
    owned, clashes = without_clashes(loaded)
    _print_problems(clashes)
    failed = failed or bool(clashes)
    for located in loaded:
        for warning in located.warnings:
            _err(_warning_line(warning))
    ok_lines = list(template_ok)
    for located in owned:
        steps = _plural(len(located.spec.effective_steps), "step")
        ok_lines.append((located.file, f"ok  {located.file} (rollout {located.spec.rollout_name}: {steps})"))
    for _, line in sorted(ok_lines, key=lambda item: order.get(item[0], len(order))):
        print(line)
    return 1 if failed else 0


def run_schema(args: argparse.Namespace) -> int:
    print(json.dumps(RolloutSpec.model_json_schema(by_alias=True), indent=2))
    return 0


def run_crd(args: argparse.Namespace) -> int:
    print(crd_yaml(), end="")
    return 0


def format_duration(seconds: float) -> str:
    """Seconds -> the spec's duration syntax: 90 -> '1m30s', 0.5 -> '500ms'."""
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms" if millis < 1000 else f"{millis / 1000:g}s"
    hours, rest = divmod(millis // 1000, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"


@dataclass(frozen=True)
class PlanState:
    """One routing state of a plan, named for people and for tools."""

    state: str  # "baseline", "step N" (1-based, as `ramp status` counts), "promoted"
    title: str
    routing: DesiredRouting
    step_index: int | None = None  # 0-based index into spec steps (field path steps.N)

    def manifests(self) -> list[dict[str, Any]]:
        """What the spec's router writes for this state (VirtualService + DestinationRule, or an HTTPRoute)."""
        return ROUTERS[self.routing.router]().render(self.routing)


def plan_states(plan: Plan) -> list[PlanState]:
    states = [PlanState("baseline", "baseline (rollback target)", plan.baseline)]
    total = len(plan.steps)
    for step in plan.steps:
        if step.kind == "approval":
            detail = "waits for manual approval"
        else:
            detail = f"duration {format_duration(step.duration)}"
        number = step.index + 1
        title = f"step {number}/{total}: {step.label} ({detail})"
        states.append(PlanState(f"step {number}", title, step.routing, step.index))
    states.append(PlanState("promoted", f"promoted: {plan.target} 100%", plan.promoted))
    return states


def _crd_schemas(option: str | None) -> IstioSchemas:
    """The CRDs to validate against: Istio's from --crds, else $RAMP_ISTIO_CRDS, else the packaged copy; plus the
    packaged Gateway API HTTPRoute CRD.

    Always validates: a missing file raises FileNotFoundError (reported, exit 1), never a silent skip."""
    return RouteSchemas.load(Path(option) if option is not None else None)


Rendered = list[tuple[PlanState, list[dict[str, Any]]]]


def _render_yaml(spec_file: str, plan: Plan, rendered: Rendered) -> str:
    out = [f"# ramp plan {spec_file}: rollout {plan.rollout}, target {plan.target}, {len(rendered)} states"]
    for state, manifests in rendered:
        for manifest in manifests:
            out.append("---")
            out.append(f"# {state.title}")
            out.append(f"# routing: {state.routing.describe()}")
            out.append(yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False).rstrip("\n"))
    return "\n".join(out) + "\n"


def _render_json(rendered: Rendered) -> str:
    entries = [
        {
            "state": state.state,
            "step_index": state.step_index,
            "title": state.title,
            "routing": state.routing.describe(),
            "manifests": manifests,
        }
        for state, manifests in rendered
    ]
    return json.dumps(entries, indent=2)


def run_plan(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(Path(args.spec))
    except SpecError as exc:
        _print_problems(exc.problems)
        return 1
    try:
        plan = build_plan(spec)
        rendered: Rendered = [(state, state.manifests()) for state in plan_states(plan)]
    except ValueError as exc:  # a bug in planning, not in the spec: say so plainly
        _err(f"{args.spec}: cannot plan this rollout: {exc}")
        return 1
    try:
        schemas = _crd_schemas(args.crds)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        _err(f"ramp plan: cannot load the CRDs (Istio, Gateway API): {exc}")
        return 1
    errors = [
        f"{args.spec}: {state.state}: {manifest['kind']} {manifest['metadata']['name']}: {error}"
        for state, manifests in rendered
        for manifest in manifests
        for error in schemas.validate(manifest)
    ]
    if errors:
        for error in errors:
            _err(error)
        _err(f"ramp plan: {_plural(len(errors), 'manifest error')} against {schemas.path}")
        return 1
    if args.output == "json":
        print(_render_json(rendered))
    else:
        print(_render_yaml(args.spec, plan, rendered), end="")
    return 0
