#!/usr/bin/env bash
# Installs everything Ramp needs on a fresh Debian machine, idempotently:
# Debian's prometheus (when absent), podman, buildah, runc and mmdebstrap (image tests; when absent),
# a venv in .venv, and the project with its extras.
#   .ci/bootstrap.sh              what the demo and the controller need
#   .ci/bootstrap.sh --browser    also Debian's chromium (when absent), for the tests in tests/browser/
set -euo pipefail
cd "$(dirname "$0")/.."

with_browser=0
for arg in "$@"; do
  case "$arg" in
    --browser) with_browser=1 ;;
    *) echo "bootstrap: unknown option '$arg' (usage: .ci/bootstrap.sh [--browser])" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v prometheus >/dev/null 2>&1 && [ ! -x /usr/bin/prometheus ]; then
  echo "bootstrap: installing Debian's prometheus package" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package may start a system service; Ramp runs its own instance on a free port.
  (as_root service prometheus stop || true) >/dev/null 2>&1
fi

# The image tests (tests/image/) build and run the container image with podman (runc runtime) on a Debian
# base made by mmdebstrap; buildah comes with podman's build support.
missing_image_tools=()
for tool in podman buildah runc mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing_image_tools+=("$tool")
done
if [ "${#missing_image_tools[@]}" -gt 0 ]; then
  echo "bootstrap: installing Debian's ${missing_image_tools[*]} (image tests)" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    podman buildah runc mmdebstrap >/dev/null
fi

# The browser tests (tests/browser/) load the HTML reports in headless Chromium; DejaVu gives its pages a font.
if [ "$with_browser" -eq 1 ] && [ ! -x /usr/bin/chromium ]; then
  echo "bootstrap: installing Debian's chromium (browser tests)" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.ramp-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing Python packages (pip install -e '.[local,test]')" >&2
  log=.venv/pip-install.log
  { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
    .venv/bin/python -m pip install --disable-pip-version-check -e '.[local,test]'; } >"$log" 2>&1 \
    || { grep -v '^WARNING: Location' "$log" | tail -40 >&2; echo "bootstrap: pip install failed (see $log)" >&2; exit 1; }
  .venv/bin/python -c "import controller, pydantic, apscheduler, kubernetes" \
    || { echo "bootstrap: package install failed" >&2; exit 1; }
  touch "$stamp"
fi
