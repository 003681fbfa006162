"""The `hooks:` model and its cross-field rules (`hook_problems`), and the example spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from controller.spec import RolloutSpec
from controller.spec_hooks import Hook, hook_problems
from controller.spec_loader import SpecError, parse_spec_text
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, spec

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_example_spec_is_valid_and_uses_every_hook_type() -> None:
    s = parse_spec_text((REPO_ROOT / "rollout-specs" / "hooks.yaml").read_text(), "hooks.yaml")
    assert hook_problems(s) == []
    assert {h.type for h in s.hooks} == {"pre-step", "step-gate", "confirm-promotion", "post-rollout"}
    assert all(h.secret_file for h in s.hooks)


def test_defaults() -> None:
    h = Hook.model_validate({"name": "a", "type": "pre-step", "url": "https://h.example/x"})
    assert (h.steps, h.timeout, h.retries, h.secret_file, h.metadata) == (None, 10.0, 2, None, {})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "confirm-promotion", "steps": [1]}, "steps applies to pre-step and step-gate hooks only"),
        ({"type": "post-rollout", "steps": [2]}, "steps applies to pre-step and step-gate hooks only"),
        ({"type": "pre-step", "steps": [2, 2]}, "steps lists a step twice"),
        ({"type": "pre-step", "steps": [0]}, "greater than or equal to 1"),
        ({"type": "pre-step", "url": "http://user:pw@h/x"}, "must not carry credentials"),
        ({"type": "pre-step", "url": "ftp://h/x"}, "http:// or https://"),
        ({"type": "pre-step", "timeout": "2m"}, "above the limit of 1m"),
        ({"type": "pre-step", "retries": 11}, "less than or equal to 10"),
        ({"type": "on-error"}, "pre-step"),
    ],
)
def test_refused_hooks(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Hook.model_validate({"name": "a", "url": "https://h.example/x", **fields})
    assert message in str(caught.value)


def test_hook_names_are_unique_and_steps_exist() -> None:
    text = NO_APPROVAL_YAML + (
        "hooks:\n"
        "  - {name: a, type: pre-step, url: 'http://h/a', steps: [1, 4]}\n"
        "  - {name: a, type: post-rollout, url: 'http://h/b'}\n"
    )
    assert hook_problems(RolloutSpec.model_validate(yaml.safe_load(text))) == [
        (("hooks", 0, "steps", 1), "step 4 does not exist: the rollout has 3 steps"),
        (("hooks", 1, "name"), "duplicate hook name 'a'"),
    ]
    with pytest.raises(SpecError) as caught:  # and `ramp validate` (the loader) reports them with their lines
        spec(text)
    assert {(p.path, p.reason) for p in caught.value.problems} == {
        ("hooks.0.steps.1", "step 4 does not exist: the rollout has 3 steps"),
        ("hooks.1.name", "duplicate hook name 'a'"),
    }


def test_default_steps_count_for_steps() -> None:
    text = "service: a\nversions: [{name: v1, weight: 1}, {name: v2, weight: 0}]\ntarget: v2\n"
    ok = spec(text + "hooks: [{name: h, type: step-gate, url: 'http://h/', steps: [4]}]\n")
    bad = RolloutSpec.model_validate(
        yaml.safe_load(text + "hooks: [{name: h, type: step-gate, url: 'http://h/', steps: [5]}]\n")
    )
    assert hook_problems(ok) == [] and len(hook_problems(bad)) == 1


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/x", "http://metadata.google.internal/computeMetadata/v1/"],
)
def test_a_hook_or_notification_url_at_a_metadata_service_is_refused(url: str) -> None:
    text = NO_APPROVAL_YAML + f"hooks: [{{name: h, type: post-rollout, url: '{url}'}}]\n"
    with pytest.raises(SpecError, match="link-local address"):
        parse_spec_text(text, "x.yaml")
    text = NO_APPROVAL_YAML + f"notifications: [{{name: n, type: webhook, url: '{url}'}}]\n"
    with pytest.raises(SpecError, match="link-local address"):
        parse_spec_text(text, "x.yaml")
