"""Spec rules against hostile values: gates, header matches (RE2, control characters, match-all), hosts,
bounds on durations and counts, NaN/infinity, version names. Each problem names the real reason at its line."""

from __future__ import annotations

import argparse
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controller import cli_spec
from controller.spec import VersionWeight, validate_version_name
from controller.spec_loader import SpecError, parse_spec_text

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


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec_text(text, "spec.yaml")
    return [str(p) for p in caught.value.problems]


def header_step(header: str) -> str:
    """A spec whose step 0 is `header` (a YAML flow mapping) at line 9."""
    return BASE + f"steps:\n  - header: {header}\n  - weight: 100\n"


def header_problems(header: str) -> list[str]:
    return problems(header_step(header))


# --- gates -----------------------------------------------------------------------------------------


def test_a_spec_without_gates_is_refused() -> None:
    # With `gates: []` nothing is judged: the rollout was promoted even while Prometheus answered 500.
    assert problems(BASE + "gates: []\n") == [
        "spec.yaml:8: gates: no gates: with no gate nothing is judged and the rollout would be "
        "promoted without evidence (omit gates for the defaults)"
    ]


def test_at_most_20_gates() -> None:
    gates = "".join(f"  - {{name: g{i}, metric: error_rate, max: 1}}\n" for i in range(21))
    assert problems(BASE + "gates:\n" + gates) == ["spec.yaml:8: gates: at most 20 gates allowed, got 21"]
    assert len(parse_spec_text(BASE + "gates:\n" + gates.split("\n", 1)[1], "spec.yaml").gates) == 20


# --- header values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (r"(v2)\\1", "invalid escape sequence: \\1"),  # backreference
        ("(?=v2)v2", "invalid perl operator: (?="),  # lookahead
        ("(?<!x)v2", "invalid perl operator: (?<!"),  # lookbehind
        ("(unclosed", "missing ): (unclosed"),
        ("v{1001}", "invalid repetition size: {1001}"),
    ],
)
def test_regexes_that_are_not_re2_are_refused(value: str, detail: str) -> None:
    assert header_problems(f'{{name: x-version, value: "{value}", match: regex}}') == [
        f"spec.yaml:9: steps.0.header.value: not a valid RE2 regex ({detail}): Envoy matches headers with RE2, "
        "which has no backreferences or lookaround"
    ]


def test_a_regex_too_big_for_envoy_is_refused() -> None:
    assert header_problems("{name: x-version, value: '(abc|def){50}', match: regex}") == [
        "spec.yaml:9: steps.0.header.value: regex too complex for Envoy: RE2 program size 404 > 100 "
        "(Envoy's default limit)"
    ]


@pytest.mark.parametrize(
    ("escaped", "shown"),
    [("\\r\\nx-evil: 1", "'\\r'"), ("v2\\n", "'\\n'"), ("v\\0", "'\\x00'"), ("v\\x07", "'\\x07'"),
     ("v\\x7f", "'\\x7f'"), ("v\\t2", "'\\t'"), ("v\\u00e9", "'é'")],
)  # fmt: skip
def test_control_and_non_ascii_characters_in_header_values_are_refused(escaped: str, shown: str) -> None:
    kind = "a non-ASCII character" if shown == "'é'" else "a control character"
    assert header_problems(f'{{name: x-version, value: "{escaped}"}}') == [
        f"spec.yaml:9: steps.0.header.value: header value has {kind} ({shown}): Envoy refuses or cannot match "
        "it; use printable ASCII"
    ]


def test_header_values_with_outer_spaces_or_empty_are_refused() -> None:
    assert header_problems('{name: x-version, value: " v2"}') == [
        "spec.yaml:9: steps.0.header.value: header value starts or ends with a space: HTTP strips it, "
        "so no request would match"
    ]
    empty = (
        "spec.yaml:9: steps.0.header.value: header value is empty: an empty exact value selects nobody, "
        "an empty prefix or regex everybody"
    )
    for match in ("exact", "prefix", "regex"):
        assert header_problems(f"{{name: x-version, value: '', match: {match}}}") == [empty]


@pytest.mark.parametrize("regex", [".*", "(?s).*", "(|.+)", r"[\s\S]*", "v2|.*", r"\C*", ".*.*", "(.?)*", ".{0,9}.*"])
def test_a_regex_matching_every_value_is_refused(regex: str) -> None:
    assert header_problems(f"{{name: x-version, value: '{regex}', match: regex}}") == [
        f"spec.yaml:9: steps.0.header.value: regex {regex!r} matches every value: every request carrying "
        "x-version would reach the target"
    ]


@pytest.mark.parametrize("name", ["user-agent", "accept", "accept-encoding", "x-forwarded-for"])
def test_any_non_empty_value_of_a_header_every_request_carries_is_refused(name: str) -> None:
    assert header_problems(f"{{name: {name}, value: '.+', match: regex}}") == [
        f"spec.yaml:9: steps.0.header.value: regex '.+' matches any non-empty {name}, which nearly every request "
        "carries: this is not a header-only test"
    ]


@pytest.mark.parametrize(
    "header",
    [
        "{name: x-version, value: v2}",
        "{name: x-version, value: '.+', match: regex}",  # only testers send x-version at all
        "{name: x-version, value: 'v2|v3', match: regex}",
        "{name: user-agent, value: 'ramp-tester/.*', match: regex}",
        "{name: user-agent, value: ramp-tester, match: prefix}",
        "{name: cookie, value: '.*canary=1.*', match: regex}",
        "{name: x_tester, value: '.*', match: exact}",  # exact: the literal text '.*'
    ],
)
def test_specific_header_matches_are_accepted(header: str) -> None:
    spec = parse_spec_text(header_step(header), "spec.yaml")
    assert spec.effective_steps[0].header is not None


# --- header names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("':authority'", ":authority is an HTTP/2 pseudo-header, not a header a VirtualService header match "
         "routes on (the host is the spec's host)"),
        ("':path'", ":path is an HTTP/2 pseudo-header"),
        ("host", "every request carries host and the VirtualService already selects it: use the spec's host field"),
        ("content-length", "content-length describes the body"),
        ("x-request-id", "Envoy sets or overwrites x-request-id on every request: it cannot select testers"),
        ("x-envoy-original-path", "Envoy sets or overwrites x-envoy-original-path on every request"),
        ("X-Version", "header name 'X-Version' must be lowercase (Istio matches lowercased names): use 'x-version'"),
        ('"x-version\\r\\nx-evil"', "header name 'x-version\\r\\nx-evil' has control or non-ASCII characters"),
        ("'x version'", "header name 'x version' is not a valid header token for Istio"),
        ("'x-version:'", "is not a valid header token for Istio"),
        ("''", "header name is empty"),
    ],
)  # fmt: skip
def test_header_names_the_data_plane_does_not_route_on_are_refused(name: str, reason: str) -> None:
    found = header_problems(f"{{name: {name}, value: v2}}")
    assert len(found) == 1 and found[0].startswith("spec.yaml:9: steps.0.header.name: "), found
    assert reason in found[0], found


@pytest.mark.parametrize(
    "name", ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "trailer"]
)
def test_hop_by_hop_header_names_are_refused(name: str) -> None:
    assert header_problems(f"{{name: {name}, value: v2}}") == [
        f"spec.yaml:9: steps.0.header.name: {name} is a hop-by-hop header (RFC 9110 7.6.1): proxies drop it and "
        "HTTP/2 forbids it, so it cannot select testers"
    ]


# --- hosts -----------------------------------------------------------------------------------------

HOST_RULE = (
    "is not a DNS name: dot-separated labels of lowercase letters, digits and '-', starting and ending with "
    "a letter or digit, at most 63 characters (RFC 1123, lowercase)"
)


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("'*'", "host '*' has a wildcard: Ramp routes one service's host, give its full DNS name"),
        ("'*.shop.example.com'", "host '*.shop.example.com' has a wildcard"),
        ("'evil host/../x'", f"host 'evil host/../x' {HOST_RULE}"),
        ("Shop.example.com", f"host 'Shop.example.com' {HOST_RULE}"),
        ("'shop..example.com'", f"host 'shop..example.com' {HOST_RULE}"),
        ("shop.example.com.", f"host 'shop.example.com.' {HOST_RULE}"),
        ("-shop.example.com", f"host '-shop.example.com' {HOST_RULE}"),
        ("a" * 64 + ".com", HOST_RULE),
        ("''", "host must have 1 to 253 characters, got 0"),
        ('"shop\\n.example.com"', HOST_RULE),
    ],
)  # fmt: skip
def test_hosts_must_be_dns_names_without_wildcards(host: str, reason: str) -> None:
    found = problems(BASE + f"host: {host}\n")
    assert len(found) == 1 and found[0].startswith("spec.yaml:8: host: "), found
    assert reason in found[0], found


def test_long_but_valid_hosts_are_accepted() -> None:
    host = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters, labels of 63
    assert len(host) == 253
    assert parse_spec_text(BASE + f"host: {host}\n", "spec.yaml").fqdn == host
    assert "host must have 1 to 253 characters, got 254" in problems(BASE + f"host: {host}x\n")[0]
    assert parse_spec_text(BASE + "host: reviews.shop.svc.cluster.local\n", "spec.yaml").host is not None


# --- durations and counts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("schedule: {interval: 0}", "schedule.interval: duration 0s is below the minimum of 100ms"),
        ("schedule: {interval: 50ms}", "schedule.interval: duration 50ms is below the minimum of 100ms"),
        ("schedule: {interval: 11m}", "schedule.interval: duration 11m is above the limit of 10m"),
        ("analysis: {window: 0}", "analysis.window: duration 0s is below the minimum of 5s"),
        ("analysis: {window: 2h}", "analysis.window: duration 2h is above the limit of 1h"),
        ("rollback: {missing_data_timeout: 25h}",
         "rollback.missing_data_timeout: duration 25h is above the limit of 24h"),
        ("steps: [{weight: 100, duration: 3.6e+26}]", "steps.0.duration: duration 3.6e+26s is above the limit of 24h"),
        ("steps: [{weight: 100, duration: 100000000000h}]",
         "steps.0.duration: duration 3.6e+14s is above the limit of 24h"),
        ("steps: [{weight: 100, duration: " + "9" * 400 + "s}]",
         "steps.0.duration: duration '" + "9" * 36 + "... is above the limit of 24h"),
        ("steps: [{weight: 100, duration: .nan}]",
         "steps.0.duration: duration is not a number (.nan): give seconds or a form like '30s'"),
        ("steps: [{weight: 100, duration: .inf}]",
         "steps.0.duration: duration is not finite: give seconds or a form like '30s'"),
        ("steps: [{weight: 100, duration: -1}]", "steps.0.duration: duration must be >= 0"),
    ],
)  # fmt: skip
def test_durations_are_bounded_and_say_why(field: str, reason: str) -> None:
    assert problems(BASE + field + "\n") == [f"spec.yaml:8: {reason}"]


def test_the_bounds_themselves_are_accepted() -> None:
    text = BASE + (
        "steps: [{weight: 100, duration: 24h}]\n"
        "schedule: {interval: 100ms}\n"  # sub-second ticks: the kill -9 reliability test runs with these
        "analysis: {window: 5s}\n"
        "rollback: {missing_data_timeout: 24h}\n"
    )
    spec = parse_spec_text(text, "spec.yaml")
    assert (spec.schedule.interval, spec.analysis.window, spec.rollback.missing_data_timeout) == (0.1, 5, 86400)
    spec = parse_spec_text(BASE + "schedule: {interval: 10m}\nanalysis: {window: 1h}\n", "spec.yaml")
    assert (spec.schedule.interval, spec.analysis.window) == (600, 3600)


def test_window_shorter_than_the_interval_is_refused() -> None:
    assert problems(BASE + "schedule: {interval: 1m}\nanalysis: {window: 30s}\n") == [
        "spec.yaml:9: analysis.window: window 30s is shorter than the tick interval 1m: requests between two "
        "windows would never be judged"
    ]


def test_ten_thousand_steps_are_refused() -> None:
    steps = "steps:\n" + "  - approval: {}\n" * 10_000
    assert problems(BASE + steps) == ["spec.yaml:8: steps: at most 50 steps allowed, got 10000"]


def test_at_most_ten_versions() -> None:
    versions = "".join(f"  - {{name: v{i}, weight: 1}}\n" for i in range(11))
    text = "service: shop\nversions:\n" + versions + "target: v10\n"
    assert problems(text) == ["spec.yaml:2: versions: at most 10 versions allowed, got 11"]
    traffic = "{" + ", ".join(f"v{i}: 1" for i in range(11)) + "}"
    assert problems(BASE + f"steps: [{{traffic: {traffic}}}]\n") == [
        "spec.yaml:8: steps.0.traffic: at most 10 versions allowed, got 11"
    ]


@pytest.mark.parametrize(
    ("gate", "field", "reason"),
    [
        ("{metric: error_rate, max: .nan}", "max", "not a number (NaN): give a finite number"),
        ("{metric: error_rate, max: .inf}", "max", "not finite (infinity): give a finite number"),
        ("{metric: error_rate, max: -.inf}", "max", "not finite (infinity): give a finite number"),
        ("{metric: error_rate, max: 'nan'}", "max", "not a number (NaN): give a finite number"),
        ("{metric: error_rate, mode: statistical, alpha: .nan}", "alpha", "not a number (NaN): give a finite number"),
        ("{metric: error_rate, mode: statistical, tolerance: .inf}", "tolerance",
         "not finite (infinity): give a finite number"),
        ("{metric: error_rate, max: 1, min_requests: .nan}", "min_requests",
         "not a number (NaN): give a finite number"),
        ("{metric: error_rate, max: 1, min_requests: 10000000000}", "min_requests",
         "Input should be less than or equal to 1000000000"),
    ],
)  # fmt: skip
def test_nan_and_infinite_numbers_say_so(gate: str, field: str, reason: str) -> None:
    assert problems(BASE + f"gates: [{gate}]\n") == [f"spec.yaml:8: gates.0.{field}: {reason}"]


def test_failed_checks_is_not_a_boolean() -> None:
    assert problems(BASE + "rollback: {failed_checks: yes}\n") == [
        "spec.yaml:8: rollback.failed_checks: expected a number, not a boolean"
    ]


def test_approval_messages_are_one_printable_line() -> None:
    assert problems(BASE + 'steps: [{approval: {message: "ok\\u001b[2J"}}, {weight: 100}]\n') == [
        "spec.yaml:8: steps.0.approval.message: message has control characters: use one line of printable text"
    ]


# --- version names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "V1", "v1/..", "-v1", "v1-", "", "a" * 64, "v1\n", "v_1", "v.1"])
def test_validate_version_name_refuses_what_the_spec_refuses(name: str) -> None:
    reason = validate_version_name(name)
    assert reason is not None and "is not a DNS label" in reason
    with pytest.raises(ValidationError) as caught:
        VersionWeight(name=name, weight=1)
    assert reason in str(caught.value)


def test_validate_version_name_reason_for_a_path() -> None:
    assert validate_version_name("../../x") == (
        "version name '../../x' is not a DNS label: lowercase letters, digits and '-', starting and ending with "
        "a letter or digit, at most 63 characters"
    )
    assert validate_version_name("v2") is None
    assert validate_version_name(2) == "a version name must be a string"


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.text(alphabet=st.sampled_from("abv0129-_./\n A"), max_size=70) | st.text(max_size=8))
def test_validate_version_name_agrees_with_the_spec_model(name: str) -> None:
    try:
        VersionWeight(name=name, weight=1)
        accepted = True
    except ValidationError:
        accepted = False
    assert (validate_version_name(name) is None) == accepted


# --- the JSON Schema still generates and states the bounds ------------------------------------------


def test_json_schema_generates_with_the_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="ramp")
    cli_spec.register(parser.add_subparsers())
    args = parser.parse_args(["schema"])
    assert args.handler(args) == 0
    schema = json.loads(capsys.readouterr().out)
    properties, defs = schema["properties"], schema["$defs"]
    assert (properties["gates"]["minItems"], properties["gates"]["maxItems"]) == (1, 20)
    assert (properties["versions"]["minItems"], properties["versions"]["maxItems"]) == (1, 10)
    assert properties["steps"]["maxItems"] == 50
    assert "100ms to 10m" in defs["Schedule"]["properties"]["interval"]["description"]
    assert "5s to 1h" in defs["Analysis"]["properties"]["window"]["description"]
    assert "RE2" in defs["HeaderMatch"]["properties"]["value"]["description"]
    assert defs["VersionWeight"]["properties"]["name"]["pattern"] == "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
