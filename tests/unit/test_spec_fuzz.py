"""Fuzzing the spec loader: any input gives a RolloutSpec or a SpecError, never anything else.

Every SpecError problem must point at a real line (>= 1, within the document), carry a
non-empty single-line reason, and every accepted spec must plan into valid routings.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import pytest
import re2  # type: ignore[import-untyped]
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.plan import build_plan
from controller.spec import RolloutSpec
from controller.spec_loader import SpecError, parse_spec_text
from controller.spec_metrics import load_templates
from controller.weights import integer_percentages

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TEXTS = {p.name: p.read_text() for p in sorted((REPO_ROOT / "rollout-specs").glob("*.yaml"))}
EXAMPLE_DATA = {name: yaml.safe_load(text) for name, text in EXAMPLE_TEXTS.items()}
TEMPLATES = load_templates(REPO_ROOT / "rollout-specs").catalog  # custom-metrics.yaml names one

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FIELD_NAMES = [
    "apiVersion", "kind", "name", "service", "namespace", "host", "versions", "target", "steps", "gates",
    "schedule", "analysis", "rollback", "weight", "header", "traffic", "approval", "duration", "value",
    "match", "metric", "quantile", "max", "stable_margin", "min_requests", "interval", "window",
    "reporter", "on_missing_data", "missing_data_timeout", "message", "v1", "v2", "v3",
]  # fmt: skip
_YAML_BREAKS = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def yaml_line_count(text: str) -> int:
    return len(_YAML_BREAKS.findall(text)) + 1


def check(text: str, file: str = "fuzz.yaml") -> RolloutSpec | None:
    """The property: a spec (that plans cleanly) or a SpecError with well-formed problems."""
    try:
        spec = parse_spec_text(text, file, templates=TEMPLATES)
    except SpecError as exc:
        assert exc.problems
        last_line = yaml_line_count(text) + 1  # PyYAML may point just past the last line break
        for problem in exc.problems:
            assert problem.file == file
            assert 1 <= problem.line <= last_line, (problem, last_line)
            assert problem.reason.strip(), problem
            assert "\n" not in str(problem) and "\r" not in str(problem), problem
        return None
    check_plan(spec)
    check_accepted(spec)
    return spec


# Independent oracles (Python's re, not the validators under test) for what an accepted spec may hold.
_HOST = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")
_TOKEN = re.compile(r"[a-z0-9]([-a-z0-9_]{0,126}[a-z0-9])?")
_PRINTABLE_ASCII = re.compile(r"[!-~]([ -~]*[!-~])?")
_NOT_ROUTABLE = {"host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade",
                 "trailer", "content-length", "x-request-id", "x-forwarded-proto"}  # fmt: skip
_ANY_VALUES = ["", "a", "v2", "Mozilla/5.0", "*/*", "zz top", "~!@#$%^&*()_+", "x" * 200]


def check_accepted(spec: RolloutSpec) -> None:
    """Every accepted spec is within the documented bounds and routable by Envoy/Istio."""
    assert 1 <= len(spec.gates) <= 20 and 1 <= len(spec.versions) <= 10 and len(spec.effective_steps) <= 50
    assert _HOST.fullmatch(spec.fqdn), spec.fqdn
    assert 0.1 <= spec.schedule.interval <= 600
    assert max(5.0, spec.schedule.interval) <= spec.analysis.window <= 3600
    assert 0 <= spec.rollback.missing_data_timeout <= 86400
    for gate in spec.gates:
        for number in (gate.max, gate.stable_margin, gate.tolerance, gate.alpha, gate.slow_ms):
            assert number is None or math.isfinite(number), gate
    for step in spec.effective_steps:
        assert step.duration is None or 0 <= step.duration <= 86400, step
        header = step.header
        if header is None:
            continue
        assert _TOKEN.fullmatch(header.name) and header.name not in _NOT_ROUTABLE, header
        assert not header.name.startswith("x-envoy-"), header
        assert _PRINTABLE_ASCII.fullmatch(header.value), header
        if header.match == "regex":
            compiled = re2.compile(header.value)  # RE2 accepts it, as Envoy will
            assert not all(compiled.fullmatch(v) for v in _ANY_VALUES), f"match-all regex accepted: {header}"


def check_plan(spec: RolloutSpec) -> None:
    plan = build_plan(spec)
    assert dict(plan.baseline.weights) == integer_percentages(spec.baseline)
    assert dict(plan.promoted.weights)[spec.target] == 100
    for routing in plan.all_routings():
        assert sum(w for _, w in routing.live_weights()) == 100
    shares = [s.target_percent for s in plan.steps if s.kind in ("weight", "traffic")]
    assert shares == sorted(set(shares)), f"target share must strictly increase: {shares}"
    assert len(plan.steps) == len(spec.effective_steps)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["v1", "v2", "v3", "10s", "2m", "p99", "latency", "error_rate", "x-version", "exact"]),
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8), st.integers(-3, 3))
nested = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


@FUZZ
@given(st.one_of(st.dictionaries(keys, nested, max_size=10), nested))
def test_random_structures_give_a_spec_or_a_spec_error(data: Any) -> None:
    check(yaml.safe_dump(data, allow_unicode=True))


# --- mutations of the valid examples -------------------------------------------------------------

Path_ = tuple[str | int, ...]


def all_paths(node: Any, prefix: Path_ = ()) -> list[Path_]:
    found: list[Path_] = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(all_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(all_paths(value, (*prefix, i)))
    return found


def parent_of(root: Any, path: Path_) -> Any:
    node = root
    for part in path[:-1]:
        node = node[part]
    return node


MUTATIONS = ("drop", "retype", "unknown_key", "negative", "huge", "empty_list")
huge_values = st.sampled_from([10**6 + 1, 10**12, 10**400, 1e308, float("inf"), float("-inf"), float("nan")])


@st.composite
def mutated_example(draw: st.DrawFn) -> tuple[str, list[str]]:
    name = draw(st.sampled_from(sorted(EXAMPLE_DATA)))
    data = copy.deepcopy(EXAMPLE_DATA[name])
    applied: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        paths = all_paths(data)
        path = draw(st.sampled_from(paths))
        parent = parent_of(data, path)
        key = path[-1]
        op = draw(st.sampled_from(MUTATIONS))
        applied.append(f"{op} {path}")
        if op == "drop":
            del parent[key]
        elif op == "retype":
            parent[key] = draw(scalars | st.lists(scalars, max_size=2) | st.dictionaries(keys, scalars, max_size=2))
        elif op == "unknown_key":
            target = parent[key] if isinstance(parent[key], dict) else data
            target[draw(st.text(min_size=1, max_size=10))] = draw(scalars)
        elif op == "negative":
            parent[key] = draw(st.integers(-(10**9), -1) | st.floats(max_value=-1e-9, allow_nan=False))
        elif op == "huge":
            parent[key] = draw(huge_values)
        else:
            parent[key] = []
    return yaml.safe_dump(data, sort_keys=draw(st.booleans()), allow_unicode=True), applied


@FUZZ
@given(mutated_example())
def test_mutated_examples_give_a_spec_or_a_spec_error(case: tuple[str, list[str]]) -> None:
    text, _applied = case
    check(text)


def test_the_examples_themselves_pass_the_property() -> None:
    for name, text in EXAMPLE_TEXTS.items():
        assert check(text, name) is not None, name


def test_mutations_do_produce_both_outcomes() -> None:
    """Guard against a fuzzer that only ever exercises one branch."""
    valid = copy.deepcopy(EXAMPLE_DATA["demo.yaml"])
    valid["namespace"] = "other"
    assert check(yaml.safe_dump(valid)) is not None
    broken = copy.deepcopy(EXAMPLE_DATA["demo.yaml"])
    broken["steps"][1]["weight"] = 10**400
    assert check(yaml.safe_dump(broken)) is None


# --- random text ----------------------------------------------------------------------------------

yaml_ish = st.text(
    alphabet=st.sampled_from(list(":-[]{}&*!|>'\"%@`#,? \n\t\r.0123456789abcvwxyz_\x00\x85\u2028\ufeff")),
    max_size=80,
)
any_unicode = st.text(alphabet=st.characters(exclude_categories=()), max_size=80)
binary_ish = st.binary(max_size=80).map(lambda b: b.decode("utf-8", "surrogateescape"))
latin1 = st.binary(max_size=80).map(lambda b: b.decode("latin-1"))


@st.composite
def spliced_example(draw: st.DrawFn) -> str:
    text = EXAMPLE_TEXTS[draw(st.sampled_from(sorted(EXAMPLE_TEXTS)))]
    at = draw(st.integers(0, len(text)))
    cut = draw(st.integers(0, 20))
    return text[:at] + draw(yaml_ish | any_unicode) + text[at + cut :]


@FUZZ
@given(st.one_of(yaml_ish, any_unicode, binary_ish, latin1, spliced_example()))
def test_random_text_gives_a_spec_or_a_spec_error(text: str) -> None:
    check(text)


# --- hostile header values, hosts and durations in an otherwise valid spec ------------------------

hostile_text = st.one_of(
    st.from_regex(r"[a-z0-9][-a-z0-9._]{0,20}[a-z0-9]", fullmatch=True),  # plausible: some specs are accepted
    st.sampled_from(["v[0-9]+", ".+", "v2|v3", "a.*", "(?i)tester", "[^x]*", ".?", "x-version", "reviews.shop"]),
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from(list("*.-_/\\:@ \r\n\t\x00\x7fAZaz09()[]{}|?+^$\u00e9\u2028")), max_size=40),
    st.sampled_from(["*", "*.shop", "evil host/../x", ".*", "(|.+)", "v2|.*", "(a)\\1", "(?=a)", "a" * 300,
                     "x-version", ":authority", "host", "te", "x-envoy-x", "user-agent", " v2", "v2\r\nx: 1"]),
)  # fmt: skip
hostile_duration = st.one_of(
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1s", "5s", "30s", "2m", 1, 5, 30.5]),
    st.sampled_from(["0", "0s", "50ms", "100ms", "10m", "11m", "24h", "25h", "1h1s", "9" * 400 + "s", "3.6e+26"]),
    st.text(alphabet=st.sampled_from(list("0123456789.msh -e+")), max_size=12),
)


@st.composite
def hostile_fields(draw: st.DrawFn) -> str:
    data = copy.deepcopy(EXAMPLE_DATA["demo.yaml"])
    header = data["steps"][0]["header"]
    if draw(st.booleans()):
        header["name"] = draw(hostile_text)
    header["value"] = draw(hostile_text)
    header["match"] = draw(st.sampled_from(["exact", "prefix", "regex"]))
    if draw(st.booleans()):
        data["host"] = draw(hostile_text)
    section, field = draw(st.sampled_from([("schedule", "interval"), ("analysis", "window"),
                                           ("rollback", "missing_data_timeout"), ("steps", "duration")]))  # fmt: skip
    if section == "steps":
        data["steps"][draw(st.integers(0, 3))]["duration"] = draw(hostile_duration)
    else:
        data[section][field] = draw(hostile_duration)
    return yaml.safe_dump(data, allow_unicode=draw(st.booleans()), sort_keys=False)


@FUZZ
@given(hostile_fields())
def test_hostile_headers_hosts_and_durations_give_a_spec_error_or_a_sound_spec(text: str) -> None:
    check(text)


def test_hostile_fields_are_refused_at_their_line() -> None:
    data = copy.deepcopy(EXAMPLE_DATA["demo.yaml"])
    data["host"] = "*"
    data["steps"][0]["header"] = {"name": "x-version", "value": "v2\r\n", "match": "exact"}
    data["schedule"]["interval"] = 3.6e26
    text = yaml.safe_dump(data, sort_keys=False)
    lines = text.splitlines()
    with pytest.raises(SpecError) as caught:
        parse_spec_text(text, "fuzz.yaml")
    found = {(p.path, p.line) for p in caught.value.problems}
    assert found == {
        ("host", next(i for i, line in enumerate(lines, 1) if line.startswith("host:"))),
        ("steps.0.header.value", next(i for i, line in enumerate(lines, 1) if "value:" in line)),
        ("schedule.interval", next(i for i, line in enumerate(lines, 1) if "interval:" in line)),
    }
