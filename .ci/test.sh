#!/usr/bin/env bash
# The whole test suite: lint, strict types, unit + fuzz tests, end-to-end tests on real Envoy + Prometheus,
# the HTML reports in headless Chromium (bootstrap --browser installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/bootstrap.sh --browser
.venv/bin/ruff check controller services tests bench
.venv/bin/mypy
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
# The unit tests are pure (no data plane, no timing against other processes): two workers. Then two sessions side
# by side, each running its tests one at a time: every test that runs real Envoy + Prometheus and times a rollout
# (and the demos, which check that no demo process is left behind), and everything else (emulated API server,
# charts, image). pytest-xdist's groups cannot do this: its loadgroup mode no longer groups under pytest 9.
.venv/bin/python -m pytest -q -n 2 tests/unit
exec .ci/pytest_side_by_side.sh
