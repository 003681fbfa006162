# Ramp controller image: multi-stage, slim, non-root, read-only-root-filesystem friendly.
# Build:  docker build -t ramp .
# Run:    docker run --read-only ramp --specs /etc/ramp/specs --prometheus http://prometheus:9090

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY services ./services
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
# Install, then remove the installers: the runtime image carries no build or packaging tools.
RUN pip install --no-cache-dir /wheels/*.whl \
 && rm -rf /wheels \
 && pip uninstall -y pip setuptools wheel 2>/dev/null; \
    useradd --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ramp
# No bytecode writes, logs straight to stdout as JSON: nothing needs a writable root filesystem.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RAMP_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["ramp", "controller"]
CMD ["--specs", "/etc/ramp/specs"]
