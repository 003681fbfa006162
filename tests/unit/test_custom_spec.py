"""Custom gates in the spec: the query/selector checks (placeholders only where batching can fill them,
balanced brackets, size), the gate rules, MetricTemplate files resolved by name from the spec's directory
(unknown names and duplicates as file:line: field problems), and `ramp validate` / `ramp plan` on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main
from controller.spec_directory import SpecDirectory
from controller.spec_loader import SpecError, load_spec, parse_spec_text
from controller.spec_metrics import MAX_QUERY_CHARS, check_query, check_selector, load_templates

REPO = Path(__file__).resolve().parents[2]
SEL = 'destination_service_name=~"{{ service }}", destination_workload_namespace=~"{{ namespace }}"'
BY = "destination_workload_namespace, destination_service_name, destination_version"
QUERY = f"sum by ({BY}) (rate(x{{{SEL}}}[{{{{ window }}}}]))"
BAD = f'istio_requests_total{{response_code=~"4..", {SEL}}}'
TOTAL = f"istio_requests_total{{{SEL}}}"
HEAD = "service: shop\nnamespace: prod\nversions: [{name: v1, weight: 90}, {name: v2, weight: 10}]\ntarget: v2\n"
TEMPLATE = f"apiVersion: ramp/v1\nkind: MetricTemplate\nname: four-xx\nquery: '{QUERY}'\n"


def problems(text: str) -> list[str]:
    try:
        parse_spec_text(text, "s.yaml")
    except SpecError as exc:
        return [str(p) for p in exc.problems]
    return []


def gate_problems(gate: str) -> list[str]:
    return problems(HEAD + f"gates:\n  - {gate}\n")


def test_a_query_with_service_and_namespace_matchers_and_a_window_range_is_accepted() -> None:
    assert check_query(QUERY) == QUERY
    assert check_query(QUERY.replace("x{", 'x{reporter="{{ reporter }}", ')) is not None
    assert check_selector(BAD) == BAD


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ('x{destination_service_name="{{ service }}"}', 'must fill a whole regex matcher, e.g. label=~"{{ service }}"'),
        ('x{s=~"{{ service }}-canary", n=~"{{ namespace }}"}', "must fill a whole regex matcher"),
        ('x{s=~"{{ service }}", n=~"{{ namespace }}"}[{{ windw }}]', "unknown placeholder {{ windw }}"),
        ('x{s=~"{{ service }}", n=~"{{ namespace }}"} offset {{ window }}', "must be a range, e.g. [{{ window }}]"),
        ('x{s=~"{{ service }}", n=~"{{ namespace }}", r=~"a{{"}', "stray '{{' or '}}'"),
        ('x{s=~"{{ service }}"}', 'select the rollouts\' namespaces with =~"{{ namespace }}"'),
        ('sum(x{s=~"{{ service }}", n=~"{{ namespace }}"}', "unclosed '('"),
        ('x{s=~"{{ service }}", n=~"{{ namespace }}"})', "unbalanced ')'"),
        ('x{s=~"{{ service }}", n=~"{{ namespace }}"} and y{a="unterminated}', "unterminated string"),
        ("", "empty query"),
        ("x\x00", "control characters"),
        ("x" * (MAX_QUERY_CHARS + 1), f"longer than {MAX_QUERY_CHARS} characters"),
    ],
)
def test_a_query_batching_cannot_fill_or_that_is_not_sane_is_refused(query: str, says: str) -> None:
    with pytest.raises(ValueError, match=None) as refused:
        check_query(query)
    assert says in str(refused.value)


@pytest.mark.parametrize(
    ("selector", "says"),
    [
        (f"rate({TOTAL}[5m])", "expected one counter selector"),
        (f'x{{{SEL}}}[{{{{ window }}}}]', "expected one counter selector"),
        (f'x{{{SEL}, w=~"{{{{ window }}}}"}}', "Ramp applies the window to bad and total itself"),
        ('x{a="1"}', 'must match destination_service_name=~"{{ service }}"'),
        ('x{a = 1}', "cannot read the matchers"),
    ],
)
def test_bad_and_total_must_be_plain_counter_selectors(selector: str, says: str) -> None:
    with pytest.raises(ValueError) as refused:
        check_selector(selector)
    assert says in str(refused.value)


def test_a_query_placeholder_problem_points_at_the_gates_query_line() -> None:
    found = gate_problems("{name: c, metric: custom, max: 1, query: 'x{s=\"{{ service }}\"}'}")
    assert found and found[0].startswith("s.yaml:6: gates.0.query: ")


@pytest.mark.parametrize(
    ("gate", "says"),
    [
        (f"{{metric: custom, max: 1, query: '{QUERY}'}}", "gates.0.name: a custom gate needs a name"),
        ("{name: c, metric: custom, max: 1}", "needs query, or bad and total, or template"),
        (f"{{name: c, metric: custom, max: 1, query: '{QUERY}', bad: '{BAD}', total: '{TOTAL}'}}", "not both"),
        (f"{{name: c, metric: custom, max: 1, bad: '{BAD}'}}", "gates.0.total: bad and total go together"),
        (f"{{name: c, metric: custom, query: '{QUERY}'}}", "gate without threshold: set max, min and/or stable_margin"),
        (f"{{name: c, metric: custom, min: 5, max: 1, query: '{QUERY}'}}", "min 5 is above max 1"),
        (f"{{name: c, metric: custom, mode: both, max: 1, query: '{QUERY}'}}", "give bad and total instead of query"),
        (f"{{name: c, metric: custom, max: 1, higher_is_better: true, bad: '{BAD}', total: '{TOTAL}'}}",
         "higher_is_better applies to query only"),
        (f"{{name: c, metric: custom, min: 1, bad: '{BAD}', total: '{TOTAL}'}}", "min applies to a query"),
        (f"{{name: c, metric: custom, max: 101, bad: '{BAD}', total: '{TOTAL}'}}", "a percentage (0-100)"),
        (f"{{name: c, metric: custom, mode: statistical, max: 1, bad: '{BAD}', total: '{TOTAL}'}}",
         "max is a threshold: use mode both"),
        (f"{{metric: custom, template: t, max: 1, query: '{QUERY}'}}", "template 't' defines the metric: remove query"),
        (f"{{metric: error_rate, max: 1, query: '{QUERY}'}}", "query applies only to custom gates"),
        ("{metric: error_rate, max: 1, min: 1}", "min applies only to custom gates"),
        ("{metric: latency, quantile: p99, max: 1, grpc: true}", "grpc applies only to error_rate gates"),
        ("{metric: error_rate, max: 1, codes: ['500']}", "codes are 4xx status codes (400-499)"),
        ("{metric: error_rate, max: 1, codes: [429]}", 'codes are strings, as in the response_code label: write "429"'),
        ("{metric: error_rate, max: 1, codes: ['429', '429']}", "a code is listed twice"),
    ],
)
def test_custom_gate_rules(gate: str, says: str) -> None:
    found = gate_problems(gate)
    assert any(says in p for p in found), found


def test_valid_custom_gates_and_error_gate_options_are_accepted() -> None:
    text = HEAD + (
        "gates:\n"
        "  - {metric: error_rate, max: 1, grpc: true, codes: ['429', '404']}\n"
        f"  - {{name: four-xx, metric: custom, max: 5, min: 0, stable_margin: 1, query: '{QUERY}'}}\n"
        f"  - {{name: ok-rate, metric: custom, min: 95, higher_is_better: true, query: '{QUERY}'}}\n"
        f"  - {{name: bad, metric: custom, mode: both, max: 2, bad: '{BAD}', total: '{TOTAL}'}}\n"
        f"  - {{name: lag, metric: custom, max: 9, query: '{QUERY}', labels: {{version: ver, service: app}}}}\n"
    )
    spec = parse_spec_text(text, "s.yaml")
    assert spec.gates[0].codes == ["429", "404"] and spec.gates[0].grpc
    assert spec.gates[4].metric_labels.version == "ver" and spec.gates[4].metric_labels.namespace == (
        "destination_workload_namespace"
    )


def write_dir(tmp_path: Path, spec_gates: str, templates: dict[str, str]) -> Path:
    (tmp_path / "shop.yaml").write_text(HEAD + "gates:\n" + spec_gates)
    for name, text in templates.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_a_template_of_the_directory_is_inlined_into_the_gate_named_after_it(tmp_path: Path) -> None:
    write_dir(tmp_path, "  - {metric: custom, template: four-xx, max: 5}\n", {"t.yml": TEMPLATE})
    spec = load_spec(tmp_path / "shop.yaml")
    (gate,) = spec.gates
    assert (gate.name, gate.template, gate.query, gate.max) == ("four-xx", None, QUERY, 5)
    # the template's text is part of the spec: editing it changes the spec (and its digest) like a gate edit
    (tmp_path / "t.yml").write_text(TEMPLATE.replace("rate(", "irate("))
    assert load_spec(tmp_path / "shop.yaml") != spec


def test_an_unknown_template_names_file_line_and_field(tmp_path: Path) -> None:
    write_dir(tmp_path, "  - {metric: custom, max: 5}\n  - {metric: custom, template: nope, max: 5}\n",
              {"t.yml": TEMPLATE})  # fmt: skip
    with pytest.raises(SpecError) as refused:
        load_spec(tmp_path / "shop.yaml")
    shown = [str(p) for p in refused.value.problems]
    assert f"{tmp_path / 'shop.yaml'}:7: gates.1.template: unknown metric template 'nope' (in the spec's " \
           "directory: four-xx)" in shown  # fmt: skip


def test_the_directory_skips_template_files_resolves_specs_and_refuses_a_name_defined_twice(tmp_path: Path) -> None:
    write_dir(tmp_path, "  - {metric: custom, template: four-xx, max: 5}\n", {"a.yml": TEMPLATE})
    directory = SpecDirectory(tmp_path)
    assert directory.refresh() and directory.problems == []
    assert [r.spec.gates[0].query for r in directory.rollouts] == [QUERY]
    (tmp_path / "b.yaml").write_text(TEMPLATE)
    assert directory.refresh()
    shown = sorted(str(p) for p in directory.problems)
    assert shown[0] == f"{tmp_path / 'a.yml'}:3: name: template 'four-xx' is also defined at {tmp_path / 'b.yaml'}:3"
    assert any("unknown metric template 'four-xx'" in p for p in shown)  # neither copy is used
    assert directory.rollouts == []


def test_a_broken_template_file_is_reported_with_its_lines(tmp_path: Path) -> None:
    (tmp_path / "t.yml").write_text(TEMPLATE.replace("name: four-xx\n", "name: four-xx\nquery_typo: 1\n"))
    found = load_templates(tmp_path)
    assert [str(p) for p in found.problems] == [f"{tmp_path / 't.yml'}:4: query_typo: Extra inputs are not permitted"]
    assert found.catalog == {} and found.files == {str(tmp_path / "t.yml")}


def test_ramp_validate_accepts_the_examples_with_their_template(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(REPO / "rollout-specs")]) == 0
    out = capsys.readouterr().out
    assert f"ok  {REPO / 'rollout-specs' / 'templates.yml'} (metric template http-4xx-rate)" in out
    assert f"ok  {REPO / 'rollout-specs' / 'custom-metrics.yaml'} (rollout cart: 4 steps)" in out
    # one file alone still resolves against its directory's templates
    assert main(["validate", str(REPO / "rollout-specs" / "custom-metrics.yaml")]) == 0
    assert main(["plan", str(REPO / "rollout-specs" / "custom-metrics.yaml")]) == 0


def test_ramp_plan_on_a_template_file_says_what_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(REPO / "rollout-specs" / "templates.yml")]) == 1
    assert "kind: a MetricTemplate, not a rollout spec" in capsys.readouterr().err


def test_ramp_validate_reports_a_broken_template_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.yml").write_text(TEMPLATE.replace("{{ namespace }}", "prod"))
    assert main(["validate", str(tmp_path)]) == 1
    assert f"{tmp_path / 't.yml'}:4: query: the query must select the rollouts' namespaces" in capsys.readouterr().err
