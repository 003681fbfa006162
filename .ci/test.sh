#!/usr/bin/env bash
# The whole test suite: lint, strict types, unit + fuzz tests, end-to-end tests on real Envoy + Prometheus.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/bootstrap.sh
.venv/bin/ruff check controller services tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
