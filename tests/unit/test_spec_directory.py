from __future__ import annotations

import os
from pathlib import Path

from controller.spec_directory import SpecDirectory

VALID = (Path(__file__).resolve().parents[2] / "rollout-specs" / "demo.yaml").read_text()


def test_add_change_delete_are_picked_up_and_invalid_files_ignored_whole(tmp_path: Path) -> None:
    specs = SpecDirectory(tmp_path)
    assert specs.refresh() and specs.rollouts == [] and specs.problems == []
    (tmp_path / "demo.yaml").write_text(VALID)
    (tmp_path / "bad.yaml").write_text(VALID.replace("weight: 10\n", "weight: -10\n"))
    assert specs.refresh()
    assert [r.name for r in specs.rollouts] == ["demo"]
    assert [(p.line, p.path) for p in specs.problems] == [(13, "steps.1.weight")]
    assert not specs.refresh()  # nothing changed: no reload
    changed = VALID.replace("duration: 10s", "duration: 20s", 1)
    (tmp_path / "demo.yaml").write_text(changed)
    os.utime(tmp_path / "demo.yaml", ns=(1, 1))  # a different mtime even on coarse clocks
    assert specs.refresh() and specs.rollouts[0].plan.steps[0].duration == 20
    (tmp_path / "demo.yaml").unlink()
    assert specs.refresh() and specs.rollouts == []


def test_duplicate_rollout_names_and_foreign_namespaces_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "b.yaml").write_text(VALID)
    (tmp_path / "c.yaml").write_text(VALID.replace("service: demo", "service: other").replace(
        "namespace: default", "namespace: kube-system"))
    specs = SpecDirectory(tmp_path, allowed_namespaces=frozenset({"default", "shop"}))
    specs.refresh()
    assert [r.name for r in specs.rollouts] == []  # two owners of one service: neither wins by file order
    messages = [str(p) for p in specs.problems]
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert f"{a}:2: service: service 'default/demo' is also claimed by {b}:2: one spec per service and rollout " \
        "name; neither file is applied until one is changed or removed" in messages
    assert any(m.startswith(f"{b}:2: service: service 'default/demo' is also claimed by {a}:2: ") for m in messages)
    assert f"{tmp_path / 'c.yaml'}:3: namespace: namespace 'kube-system' is not managed by this controller " \
        "(allowed: default, shop)" in messages
