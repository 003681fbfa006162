"""The resource form of a spec file: `ramp resource` wraps, and the loader reads it back to the same spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.cli import main
from controller.spec_loader import SpecError, load_spec, parse_spec_text

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "rollout-specs").glob("*.yaml"))

RESOURCE = """\
apiVersion: ramp.dev/v1
kind: RampRollout
metadata:
  name: reviews
  namespace: shop
spec:
  service: reviews
  versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
  target: v2
  steps:
    - weight: 10
      duration: 5q
"""


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_wrapped_by_ramp_resource_reads_back_to_the_same_spec(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["resource", str(example)]) == 0
    text = capsys.readouterr().out
    (resource,) = list(yaml.safe_load_all(text))
    assert resource["apiVersion"] == "ramp.dev/v1" and resource["kind"] == "RampRollout"
    assert set(resource) == {"apiVersion", "kind", "metadata", "spec"}
    assert "apiVersion" not in resource["spec"] and "kind" not in resource["spec"]
    wrapped = tmp_path / "wrapped.yaml"
    wrapped.write_text(text)
    (tmp_path / "templates.yml").write_text((example.parent / "templates.yml").read_text())  # for custom-metrics
    original = load_spec(example)
    assert load_spec(wrapped) == original  # same fields, same defaults, same everything
    assert resource["metadata"]["name"] == original.rollout_name
    assert main(["resource", str(wrapped)]) == 0  # a resource is printed as it is
    assert yaml.safe_load(capsys.readouterr().out) == resource


def test_problems_in_a_resource_point_at_the_spec_field_and_line() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec_text(RESOURCE, "rr.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "rr.yaml:12: spec.steps.0.duration: invalid duration '5q': use forms like '30s', '2m', '1h30m', '500ms'"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("  name: reviews\n", ""), "metadata.name: metadata.name is required"),
        (("  service: reviews\n", "  service: reviews\n  name: other\n"), "spec.name: spec.name 'other' differs"),
        (("  service: reviews\n", "  service: reviews\n  kind: Rollout\n"), "spec.kind: kind belongs to the resource"),
        (("kind: RampRollout\n", "kind: RampRollout\nextra: 1\n"), "extra: unknown field in a RampRollout"),
        (("  namespace: shop\n", "  namespace: Shop_1\n"), "metadata.namespace: metadata.namespace 'Shop_1' is not"),
    ],
)
def test_a_broken_envelope_is_refused_with_the_field(change: tuple[str, str], expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec_text(RESOURCE.replace("5q", "5s").replace(*change), "rr.yaml")
    assert any(expected in str(p) for p in caught.value.problems), caught.value


def test_ramp_resource_prints_nothing_when_any_file_is_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(RESOURCE)
    assert main(["resource", str(EXAMPLES[0]), str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "bad.yaml:12: spec.steps.0.duration" in captured.err
