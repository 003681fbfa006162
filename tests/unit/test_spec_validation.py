"""Spec validation: every problem class reports the exact file, line and field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.spec import DEFAULT_STEP_DURATION, RolloutSpec, parse_duration
from controller.spec_loader import SpecError, SpecProblem, load_spec, parse_spec_text, spec_files

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO_ROOT / "rollout-specs").glob("*.yaml"))

# Lines 1-7; anything appended starts at line 8.
BASE = """\
service: shop
versions:
  - name: v1
    weight: 100
  - name: v2
    weight: 0
target: v2
"""


def problems(text: str, file: str = "spec.yaml") -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec_text(text, file)
    assert caught.value.problems, "SpecError without problems"
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return [str(p) for p in caught.value.problems]


def test_unknown_top_level_field() -> None:
    assert problems(BASE + "colour: blue\n") == ["spec.yaml:8: colour: Extra inputs are not permitted"]


def test_unknown_nested_field_typo_in_a_gate() -> None:
    text = BASE + "gates:\n  - metric: error_rate\n    maxx: 1\n"
    assert problems(text) == ["spec.yaml:10: gates.0.maxx: Extra inputs are not permitted"]


def test_unknown_field_in_a_step() -> None:
    text = BASE + "steps:\n  - weight: 10\n    durration: 10s\n"
    assert problems(text) == ["spec.yaml:10: steps.0.durration: Extra inputs are not permitted"]


def test_negative_weight() -> None:
    text = BASE.replace("weight: 100", "weight: -5")
    assert problems(text) == ["spec.yaml:4: versions.0.weight: Input should be greater than or equal to 0"]


def test_negative_traffic_weight() -> None:
    text = BASE + "steps:\n  - traffic:\n      v1: -1\n      v2: 50\n"
    assert problems(text) == ["spec.yaml:10: steps.0.traffic.v1: Input should be greater than or equal to 0"]


def test_all_weights_zero() -> None:
    text = BASE.replace("weight: 100", "weight: 0")
    assert problems(text) == [
        "spec.yaml:2: versions: all weights are 0: at least one version must carry traffic",
        "spec.yaml:2: versions: no version other than target 'v2' carries traffic to roll back to",
    ]


def test_all_weights_zero_in_a_traffic_step() -> None:
    text = BASE + "steps:\n  - traffic: {v1: 0, v2: 0}\n"
    assert problems(text) == ["spec.yaml:9: steps.0.traffic: all weights are 0"]


def test_duplicate_version() -> None:
    text = """\
service: shop
versions:
  - name: v1
    weight: 100
  - name: v1
    weight: 50
  - name: v2
    weight: 0
target: v2
"""
    assert problems(text) == ["spec.yaml:5: versions.1.name: duplicate version 'v1'"]


def test_step_weights_not_increasing() -> None:
    text = BASE + "steps:\n  - weight: 50\n  - weight: 10\n"
    assert problems(text) == [
        "spec.yaml:10: steps.1.weight: step weights must increase: "
        "target 'v2' gets 10% here, not more than 50% at step 0"
    ]


def test_traffic_step_not_increasing_target_share() -> None:
    text = BASE + "steps:\n  - weight: 50\n  - traffic: {v1: 3, v2: 1}\n"
    assert problems(text) == [
        "spec.yaml:10: steps.1.traffic: step weights must increase: "
        "target 'v2' gets 25% here, not more than 50% at step 0"
    ]


def test_gate_without_threshold() -> None:
    text = BASE + "gates:\n  - metric: error_rate\n    min_requests: 10\n"
    assert problems(text) == ["spec.yaml:9: gates.0: gate without threshold: set max and/or stable_margin"]


def test_header_step_without_header() -> None:
    text = BASE + "steps:\n  - header: null\n    duration: 10s\n  - weight: 100\n"
    assert problems(text) == ["spec.yaml:9: steps.0.header: header step without header: give name and value"]


def test_header_step_without_value() -> None:
    text = BASE + "steps:\n  - header:\n      name: x-canary\n"
    # A missing field is reported at the key of the mapping that lacks it.
    assert problems(text) == ["spec.yaml:9: steps.0.header.value: Field required"]


def test_unknown_target_version() -> None:
    text = BASE.replace("target: v2", "target: v9")
    assert problems(text) == ["spec.yaml:7: target: unknown version 'v9': not listed in versions"]


def test_unknown_version_in_traffic_step() -> None:
    text = BASE + "steps:\n  - traffic:\n      v1: 50\n      v3: 50\n"
    assert problems(text) == ["spec.yaml:11: steps.0.traffic.v3: unknown version 'v3'"]


def test_step_with_two_kinds() -> None:
    text = BASE + "steps:\n  - weight: 10\n    traffic: {v1: 1, v2: 1}\n"
    assert problems(text) == [
        "spec.yaml:9: steps.0: "
        "a step needs exactly one of header, weight, traffic, approval (got weight, traffic)"
    ]


def test_invalid_yaml_syntax_reports_the_line() -> None:
    text = BASE.replace("target: v2", "target: v2: v3")
    assert problems(text) == ["spec.yaml:7: (document): invalid YAML: mapping values are not allowed here"]


def test_invalid_yaml_indentation_reports_the_line() -> None:
    text = BASE.replace("  - name: v2\n", "  - name: v2\n   bad: x\n")
    assert problems(text) == [
        "spec.yaml:6: (document): invalid YAML: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block collection at line 3)"
    ]


def test_tab_indentation_reports_the_line() -> None:
    text = BASE + "steps:\n\t- weight: 10\n"
    assert problems(text) == [
        "spec.yaml:9: (document): invalid YAML: found character '\\t' that cannot start any token"
    ]


def test_unsafe_yaml_tag_is_rejected_at_its_line() -> None:
    text = BASE + "steps:\n  - weight: !!python/name:os.system 10\n"
    assert problems(text) == [
        "spec.yaml:9: (document): invalid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/name:os.system'"
    ]


def test_duplicate_yaml_keys_top_level() -> None:
    assert problems(BASE + "target: v2\n") == ["spec.yaml:8: target: duplicate key"]


def test_duplicate_yaml_keys_nested() -> None:
    text = BASE + "gates:\n  - metric: error_rate\n    max: 1\n    max: 2\n"
    assert problems(text) == ["spec.yaml:11: gates.0.max: duplicate key"]


def test_bad_duration_string() -> None:
    text = BASE + "steps:\n  - weight: 10\n    duration: 10 seconds\n"
    assert problems(text) == [
        "spec.yaml:10: steps.0.duration: "
        "invalid duration '10 seconds': use forms like '30s', '2m', '1h30m', '500ms'"
    ]


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90.0), ("1m30s", 90.0), ("2h", 7200.0), ("500ms", 0.5), (15, 15.0)]
)
def test_duration_forms(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_latency_gate_without_quantile() -> None:
    text = BASE + "gates:\n  - metric: latency\n    max: 100\n"
    assert problems(text) == [
        "spec.yaml:9: gates.0.quantile: latency gate needs a quantile (p50, p90 or p99)"
    ]


def test_boolean_weight_is_not_a_number() -> None:
    # YAML reads `yes` as true; pydantic's lax mode would silently turn it into weight 1.
    text = BASE.replace("weight: 100", "weight: yes")
    assert problems(text) == ["spec.yaml:4: versions.0.weight: expected a number, not a boolean"]


def test_infinite_gate_threshold_is_rejected() -> None:
    text = BASE + "gates:\n  - metric: latency\n    quantile: p99\n    stable_margin: .inf\n"
    assert problems(text) == ["spec.yaml:11: gates.0.stable_margin: not finite (infinity): give a finite number"]


def test_non_string_key_points_at_its_line() -> None:
    assert problems(BASE + "1: x\n") == ["spec.yaml:8: 1: Keys should be strings"]


def test_hostile_yaml_is_a_spec_error_not_a_crash() -> None:
    recursive = problems(BASE + "extra: &loop [*loop]\n")
    assert recursive == ["spec.yaml:8: extra: Extra inputs are not permitted"]
    deep = problems(BASE + "extra: " + "[" * 200 + "]" * 200 + "\n")
    assert deep == ["spec.yaml:8: (document): nested more than 32 levels deep"]
    huge = problems(BASE + "schedule:\n  interval: " + "9" * 400 + "\n")
    assert huge == ["spec.yaml:9: schedule.interval: duration ~10^400s is above the limit of 10m"]


def test_alias_bomb_is_fast() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    assert problems(BASE + "\n".join(lines) + "\n")[0] == "spec.yaml:8: a0: Extra inputs are not permitted"


def test_multiple_structural_problems_are_all_reported_in_line_order() -> None:
    text = """\
service: Shop
colour: blue
versions:
  - name: v1
    weight: -5
  - name: v2
    weight: 0
target: v2
steps:
  - weight: 10
    duration: soon
gates:
  - metric: latency
    quantile: p95
    max: 250
"""
    assert problems(text, "multi.yaml") == [
        "multi.yaml:1: service: String should match pattern '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
        "multi.yaml:2: colour: Extra inputs are not permitted",
        "multi.yaml:5: versions.0.weight: Input should be greater than or equal to 0",
        "multi.yaml:11: steps.0.duration: "
        "invalid duration 'soon': use forms like '30s', '2m', '1h30m', '500ms'",
        "multi.yaml:14: gates.0.quantile: Input should be 'p50', 'p90' or 'p99'",
    ]


def test_multiple_cross_field_problems_are_all_reported() -> None:
    text = BASE + (
        "steps:\n"  # 8
        "  - weight: 50\n"  # 9
        "  - traffic:\n"  # 10
        "      v1: 1\n"  # 11
        "      v3: 1\n"  # 12
        "  - weight: 40\n"  # 13
        "gates:\n"  # 14
        "  - metric: latency\n"  # 15
        "    max: 100\n"  # 16
        "  - metric: error_rate\n"  # 17
        "schedule:\n"  # 18
        "  interval: 1s\n"  # 19
        "schedule:\n"  # 20
        "  interval: 2s\n"  # 21
    )
    assert problems(text) == [
        "spec.yaml:12: steps.1.traffic.v3: unknown version 'v3'",
        "spec.yaml:13: steps.2.weight: step weights must increase: "
        "target 'v2' gets 40% here, not more than 50% at step 0",
        "spec.yaml:15: gates.0.quantile: latency gate needs a quantile (p50, p90 or p99)",
        "spec.yaml:17: gates.1: gate without threshold: set max and/or stable_margin",
        "spec.yaml:20: schedule: duplicate key",
    ]


def test_document_level_problems() -> None:
    assert problems("") == ["spec.yaml:1: (document): expected exactly one YAML document, found 0"]
    assert problems(BASE + "---\n" + BASE) == [
        "spec.yaml:1: (document): expected exactly one YAML document, found 2"
    ]
    assert problems("- a\n- b\n") == ["spec.yaml:1: (document): a rollout spec must be a mapping of fields"]


def test_load_spec_reports_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(SpecError) as caught:
        load_spec(missing)
    assert caught.value.problems == [
        SpecProblem(str(missing), 1, "", "cannot read: No such file or directory")
    ]
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SpecError) as caught:
        load_spec(binary)
    assert [str(p) for p in caught.value.problems] == [f"{binary}:1: (document): file is not UTF-8 text"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_spec_is_valid(path: Path) -> None:
    spec = load_spec(path)
    assert spec.target in spec.baseline


def test_examples_exist_and_spec_files_finds_them() -> None:
    names = [p.name for p in spec_files([REPO_ROOT / "rollout-specs"])]
    assert {"defaults.yaml", "demo.yaml", "statistical.yaml", "three-versions.yaml"} <= set(names)
    assert names == sorted(names)


def test_defaults_are_what_spec_py_documents() -> None:
    spec = load_spec(REPO_ROOT / "rollout-specs" / "defaults.yaml")
    assert spec.steps is None
    steps = spec.effective_steps
    assert [s.kind for s in steps] == ["header", "weight", "weight", "weight"]
    header = steps[0].header
    assert header is not None
    assert (header.name, header.value, header.match) == ("x-version", "v2", "exact")
    assert [s.weight for s in steps[1:]] == [10, 50, 100]
    assert DEFAULT_STEP_DURATION == 60.0
    assert [s.duration for s in steps] == [60.0] * 4
    assert [(g.metric, g.quantile, g.max, g.stable_margin) for g in spec.gates] == [
        ("error_rate", None, 1.0, None),
        ("latency", "p99", 500.0, None),
    ]
    assert [g.display_name for g in spec.gates] == ["error_rate", "latency-p99"]
    assert spec.schedule.interval == 5.0
    analysis = spec.analysis
    assert (analysis.window, analysis.min_requests, analysis.reporter) == (30.0, 20, "destination")
    assert spec.rollback.missing_data_timeout == 120.0
    assert spec.rollout_name == "checkout"
    assert spec.namespace == "payments"
    assert spec.fqdn == "checkout.payments.svc.cluster.local"
    assert spec.api_version == "ramp/v1" and spec.kind == "Rollout"


def test_default_steps_follow_the_target_name() -> None:
    spec = RolloutSpec.model_validate(
        {"service": "a", "versions": [{"name": "blue", "weight": 1}, {"name": "green", "weight": 0}],
         "target": "green"}
    )  # fmt: skip
    header = spec.effective_steps[0].header
    assert header is not None and header.value == "green"


def test_statistical_gates_need_no_threshold_and_have_documented_defaults() -> None:
    text = BASE + "gates:\n  - {metric: error_rate, mode: statistical}\n  - {metric: latency, mode: statistical}\n"
    spec = parse_spec_text(text, "spec.yaml")
    errors, latency = spec.gates
    assert (errors.mode, errors.tolerance, errors.alpha, errors.slow_ms) == ("statistical", 1.2, 0.01, None)
    assert (latency.quantile, latency.max) == (None, None)  # optional in statistical mode
    assert [g.display_name for g in spec.gates] == ["error_rate", "latency"]
    assert [g.statistical for g in spec.gates] == [True, True]
    assert parse_spec_text(BASE, "spec.yaml").gates[0].mode == "threshold"


def test_statistical_field_ranges() -> None:
    text = BASE + (
        "gates:\n"
        "  - {metric: error_rate, mode: statistical, tolerance: 0.9}\n"
        "  - {metric: error_rate, name: b, mode: statistical, alpha: 0}\n"
        "  - {metric: error_rate, name: c, mode: statistical, alpha: 1}\n"
        "  - {metric: latency, mode: statistical, slow_ms: -5}\n"
        "  - {metric: latency, name: e, mode: sequential}\n"
    )
    assert problems(text) == [
        "spec.yaml:9: gates.0.tolerance: Input should be greater than or equal to 1",
        "spec.yaml:10: gates.1.alpha: Input should be greater than 0",
        "spec.yaml:11: gates.2.alpha: Input should be less than 1",
        "spec.yaml:12: gates.3.slow_ms: Input should be greater than 0",
        "spec.yaml:13: gates.4.mode: Input should be 'threshold', 'statistical' or 'both'",
    ]


def test_statistical_fields_only_where_they_mean_something() -> None:
    text = BASE + (
        "gates:\n"
        "  - {metric: error_rate, max: 1, tolerance: 2}\n"
        "  - {metric: error_rate, name: e2, mode: statistical, slow_ms: 100}\n"
        "  - {metric: error_rate, name: e3, mode: statistical, max: 2}\n"
        "  - {metric: latency, mode: statistical, stable_margin: 20}\n"
        "  - {metric: latency, name: l2, mode: both}\n"
        "  - {metric: latency, name: l3, mode: both, max: 300}\n"
    )
    assert problems(text) == [
        "spec.yaml:9: gates.0.tolerance: tolerance applies only to mode statistical or both",
        "spec.yaml:10: gates.1.slow_ms: slow_ms applies only to latency gates",
        "spec.yaml:11: gates.2.max: max is a threshold: use mode both to combine it",
        "spec.yaml:12: gates.3.stable_margin: stable_margin is a threshold: use mode both to combine it",
        "spec.yaml:13: gates.4: mode both without threshold: set max and/or stable_margin, or use mode statistical",
        "spec.yaml:13: gates.4.quantile: latency gate needs a quantile (p50, p90 or p99)",
        "spec.yaml:14: gates.5.quantile: latency gate needs a quantile (p50, p90 or p99)",
    ]


def test_threshold_mode_still_needs_a_threshold_and_statistical_gates_need_their_own_names() -> None:
    text = BASE + "gates:\n  - {metric: error_rate, mode: threshold}\n"
    assert problems(text) == ["spec.yaml:9: gates.0: gate without threshold: set max and/or stable_margin"]
    text = BASE + "gates:\n  - {metric: error_rate, max: 1}\n  - {metric: error_rate, mode: statistical}\n"
    assert problems(text) == [
        "spec.yaml:10: gates.1: gate name 'error_rate' is used twice: a statistical gate needs its own name"
    ]
    named = text.replace("mode: statistical}", "mode: statistical, name: errors-vs-stable}")
    assert [g.display_name for g in parse_spec_text(named, "spec.yaml").gates] == ["error_rate", "errors-vs-stable"]
