"""The README's spec snippets are promises too: each one, completed with the fields it leaves out, is valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller.spec_loader import parse_spec_text
from controller.spec_metrics import load_templates

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
SECTIONS = ("### Custom gates", "### Hooks: webhooks at the points of a rollout", "### Load for the header step",
            "### Notifications")  # fmt: skip
HEAD = "service: readme\nnamespace: shop\nversions: [{name: v1, weight: 100}, {name: v2, weight: 0}]\ntarget: v2\n"


def snippet(heading: str) -> str:
    start = README.index(heading)
    found = re.search(r"```yaml\n(.*?)```", README[start:], re.S)
    assert found is not None, heading
    return found.group(1)


@pytest.mark.parametrize("heading", SECTIONS)
def test_the_readme_snippet_is_a_valid_spec_part(heading: str) -> None:
    templates = load_templates(REPO / "rollout-specs").catalog
    spec = parse_spec_text(HEAD + snippet(heading), f"README.md ({heading})", templates=templates)
    assert spec.service == "readme"
