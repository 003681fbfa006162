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
# The unit tests are pure (no data plane, no timing against other processes): two workers. Everything that runs
# real Envoy, Prometheus, an emulated API server or an image, and times it, runs alone afterwards.
.venv/bin/python -m pytest -q -n 2 tests/unit
exec .venv/bin/python -m pytest -q --ignore=tests/unit
