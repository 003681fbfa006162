"""A controller process for the kill -9 test: the real runner, spec directory and file state store.

Its router journals every applied routing (fsync before returning: this is the "data plane"),
and its metrics are scripted per service (services whose name ends in "-bad" serve 20% errors
on the new version). Run: python -m tests.reliability.controller_process SPECS STATE JOURNAL
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from controller.analysis.metrics import MetricsSnapshot, VersionMetrics
from controller.analysis.prometheus import MetricsRequest
from controller.deadline import Deadline
from controller.engine.routing_model import DesiredRouting
from controller.engine.runner import RolloutRunner
from controller.spec_directory import SpecDirectory
from controller.state.file_store import FileStateStore


class JournalRouter:
    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.current: dict[str, DesiredRouting] = {}

    def apply(self, routing: DesiredRouting, deadline: Deadline | None = None) -> bool:
        if self.current.get(routing.service) == routing:
            return False
        line = json.dumps({"service": routing.service, "routing": routing.model_dump(mode="json")}) + "\n"
        with self.journal.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self.current[routing.service] = routing
        return True


class ScriptedMetrics:
    def fetch(
        self, requests: Sequence[MetricsRequest], deadline: Deadline | None = None
    ) -> dict[MetricsRequest, MetricsSnapshot]:
        out = {}
        for request in requests:
            snapshot = MetricsSnapshot(window_seconds=request.window_seconds)
            bad = request.service.endswith("-bad")
            snapshot.by_workload[(request.namespace, request.service, "v1")] = VersionMetrics(1000, 0)
            snapshot.by_workload[(request.namespace, request.service, "v2")] = VersionMetrics(100, 20 if bad else 0)
            out[request] = snapshot
        return out


def main(argv: list[str]) -> None:
    specs, state, journal = (Path(a) for a in argv)
    directory = SpecDirectory(specs)
    runner = RolloutRunner(router=JournalRouter(journal), metrics=ScriptedMetrics(), store=FileStateStore(state))
    while True:
        if directory.refresh():
            runner.set_rollouts(directory.rollouts)
        runner.tick()
        if runner.rollouts and runner.all_terminal():
            print("all terminal", flush=True)
            return
        time.sleep(0.01)


if __name__ == "__main__":
    main(sys.argv[1:])
