# Ramp controller image: multi-stage, slim, non-root, read-only-root-filesystem friendly, built without network.
#
# The build installs only from a wheelhouse made on the host (Ramp's wheel and every dependency):
#   python -m pip wheel --wheel-dir wheelhouse .      # in a copy of the source tree
#   docker build -t ramp .                             # the context needs only wheelhouse/ (see .dockerignore)
# Run:
#   docker run --read-only -v SPECS:/etc/ramp/specs:ro ramp --specs /etc/ramp/specs --prometheus URL
# The test suite builds it with podman on a Debian base made by mmdebstrap (tests/image/, bench/image.py).
#
# Every RUN starts with `set -eu`: any failing command fails its step, and the build (a `;` hides nothing).

# The build stage needs python3 with venv and pip; the runtime stage needs python3 (and the C/C++ runtime
# libraries the wheels link against, as python:3.11-slim has them).
ARG BASE_IMAGE=python:3.11-slim
ARG RUNTIME_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
COPY wheelhouse /wheelhouse
# A venv without pip: the build stage's pip installs into it (--python), so the runtime copy carries no
# installer. --no-index: nothing is fetched, whatever the network. The kubernetes client ships an asyncio copy
# of itself (kubernetes/aio, ~68 MB of its ~128 MB) that Ramp never imports: it is left out.
RUN set -eu; \
    python3 -m venv --without-pip /opt/ramp; \
    python3 -m pip --python /opt/ramp/bin/python install --no-index --find-links /wheelhouse \
        --no-cache-dir --disable-pip-version-check ramp; \
    test ! -e /opt/ramp/bin/pip; \
    rm -r /opt/ramp/lib/python3*/site-packages/kubernetes/aio; \
    /opt/ramp/bin/python -c "import controller.cli, controller.cluster_controller, services.sample_app"; \
    /opt/ramp/bin/ramp --help >/dev/null

FROM ${RUNTIME_IMAGE}
# The official python image ships pip, setuptools and wheel: remove them (a base without pip has nothing to
# remove). pip's exit status decides: a refusal to uninstall fails the build, wherever it prints.
RUN set -eu; \
    if python3 -m pip --version >/dev/null 2>&1; then \
        python3 -m pip uninstall --yes --disable-pip-version-check pip setuptools wheel; \
    fi; \
    if python3 -m pip --version >/dev/null 2>&1; then echo "pip is still installed" >&2; exit 1; fi; \
    groupadd --gid 10001 ramp; \
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ramp
COPY --from=build /opt/ramp /opt/ramp
# No bytecode writes (the wheels' bytecode is compiled at install), logs straight to stdout as JSON:
# nothing needs a writable root filesystem.
ENV PATH=/opt/ramp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RAMP_LOG_FORMAT=json
USER 10001:10001
# The runtime base must run what the build stage installed (shared libraries, interpreter): checked here.
RUN set -eu; ramp --help >/dev/null
EXPOSE 8080
ENTRYPOINT ["ramp", "controller"]
# Istio's Prometheus; the Helm chart (charts/ramp) replaces these arguments.
CMD ["--specs", "/etc/ramp/specs", "--prometheus", "http://prometheus.istio-system.svc:9090"]
