"""Kill -9 the controller at random moments during 50 rollouts (seeded), restart it each time.

Every rollout must finish in the correct phase (bad ones RolledBack, good ones Promoted); its
history must enter every step exactly once, in order (nothing skipped or replayed); and every
routing the data plane ever received must be one of that rollout's plan routings, in plan order.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from controller.engine.phases import Phase
from controller.engine.routing_model import DesiredRouting
from controller.plan import build_plan
from controller.spec_loader import load_spec
from controller.state.file_store import FileStateStore

REPO = Path(__file__).resolve().parents[2]
ROLLOUTS = 50
SPEC = """
service: {name}
namespace: chaos
versions: [{{name: v1, weight: 100}}, {{name: v2, weight: 0}}]
target: v2
steps:
  - {{header: {{value: v2}}, duration: 2s}}
  - {{weight: 10, duration: 2s}}
  - {{weight: 50, duration: 2s}}
  - {{weight: 100, duration: 1s}}
gates: [{{metric: error_rate, max: 5}}]
schedule: {{interval: 100ms}}
analysis: {{min_requests: 10}}
"""


def test_kill_9_at_random_moments_during_50_rollouts(tmp_path: Path) -> None:
    specs, state, journal = tmp_path / "specs", tmp_path / "state", tmp_path / "journal.jsonl"
    specs.mkdir()
    names = [f"svc{i}" + ("-bad" if i % 3 == 0 else "") for i in range(ROLLOUTS)]
    for name in names:
        (specs / f"{name}.yaml").write_text(SPEC.format(name=name))
    rng = random.Random(20261123)
    kills, started = 0, time.monotonic()
    argv = [sys.executable, "-m", "tests.reliability.controller_process", str(specs), str(state), str(journal)]
    while True:
        assert time.monotonic() - started < 120, "rollouts did not finish in time"
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.4, 1.6))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0
        break
    assert kills >= 5, f"only {kills} kills: the test did not exercise restarts"

    plans = {name: build_plan(load_spec(specs / f"{name}.yaml")) for name in names}
    store = FileStateStore(state)
    for name in names:
        final = store.load(name)
        assert final is not None
        expected = Phase.ROLLED_BACK if name.endswith("-bad") else Phase.PROMOTED
        assert final.phase == expected, (name, final.reason)
        entered = [c.step for c in final.history]
        if expected == Phase.PROMOTED:
            assert entered == [0, 1, 2, 3, 4], (name, entered)
        else:
            assert entered[:-1] == list(range(len(entered) - 1)) and entered[-1] == entered[-2], (name, entered)

    seen: dict[str, list[int]] = {name: [] for name in names}
    lines = journal.read_text().splitlines()
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            assert line is lines[-1], "only the last line can be torn by a kill"
            continue
        plan = plans[entry["service"]]
        routing = DesiredRouting.model_validate(entry["routing"])
        routings = plan.all_routings()  # baseline, steps..., promoted
        assert routing in routings, f"{entry['service']}: routing outside the plan: {routing.describe()}"
        seen[entry["service"]].append(routings.index(routing))
    for name in names:
        order = seen[name]
        final_phase = store.load(name).phase  # type: ignore[union-attr]
        if final_phase == Phase.ROLLED_BACK:
            back = order.index(0)  # the rollback; restarted controllers may re-assert it
            assert back > 0 and set(order[back:]) == {0}, f"{name}: after rolling back: {order}"
            order = order[:back]
        assert order == sorted(order), f"{name}: traffic went back to an earlier step: {order}"
