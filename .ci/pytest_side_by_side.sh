#!/usr/bin/env bash
# The tests outside tests/unit as two pytest sessions side by side (see .ci/test.sh); each one's output is printed
# whole when both have ended, and the exit status is the first failing session's (0 when both pass).
set -uo pipefail
cd "$(dirname "$0")/.."
DATA_PLANE=(tests/e2e tests/dashboards tests/browser tests/reliability)
ignored=(--ignore=tests/unit)
for dir in "${DATA_PLANE[@]}"; do ignored+=("--ignore=$dir"); done
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
trap 'kill $(jobs -p) 2>/dev/null; exit 143' INT TERM
.venv/bin/python -m pytest -q "${DATA_PLANE[@]}" >"$logs/data-plane.log" 2>&1 &
plane=$!
.venv/bin/python -m pytest -q -p no:cacheprovider "${ignored[@]}" >"$logs/others.log" 2>&1 &
others=$!
wait "$plane"; plane_status=$?
wait "$others"; others_status=$?
for name in data-plane others; do
  echo "===== pytest: ${name} tests ====="
  cat "$logs/$name.log"
done
if [ "$plane_status" -ne 0 ]; then exit "$plane_status"; fi
exit "$others_status"
