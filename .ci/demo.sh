#!/usr/bin/env bash
# The main job: a real v1 -> v2 rollout on a local Envoy + Prometheus stack.
#   .ci/demo.sh                      healthy v2: header step, 10%, 50%, 100%, promoted
#   .ci/demo.sh --scenario faulty    v2 answers 20% 500s: rolled back, with the breaching value
#   .ci/demo.sh --json               machine-readable summary on stdout
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/bootstrap.sh
exec .venv/bin/ramp demo "$@"
