# sensorstats image: `docker build -t exercise:latest .`
# `docker run --rm -p 8080:8080 exercise:latest` serves with the embedded
# in-memory store; set SENSORSTATS_ETCD_ENDPOINTS to use etcd.
#
# The base is pinned by tag only: a digest cannot be verified without
# registry access. Where policy requires it, pin it after `docker pull` as
# python:3.12.12-slim-bookworm@sha256:<digest>. No `# syntax=` line: the
# builder's own frontend suffices, so a build needs no pull beyond the base.
#
# BASE_IMAGE exists for builders that cannot pull it: any Debian-based image
# with `python` (3.11+) and `pip` (22.3+, for `pip --python`) on PATH will do
# (`docker build --build-arg BASE_IMAGE=...`); tests/tools/image_check.py builds on
# such a stand-in. Both stages use it: the venv links to its interpreter.
ARG BASE_IMAGE=python:3.12.12-slim-bookworm

# --- build: a self-contained virtualenv with the pinned dependencies ---------
FROM ${BASE_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The base image's pip installs into a venv made without pip, so the venv
# holds exactly the pinned packages. --no-deps takes the file literally;
# `pip check` then fails the build if a dependency is missing from it.
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --no-cache-dir --no-deps \
        --requirement /tmp/requirements.txt \
 && pip --python /opt/venv/bin/python check

# Byte-compile the app here: the runtime filesystem is meant to be read-only
# and PYTHONDONTWRITEBYTECODE is set there. checked-hash .pyc files stay
# valid whatever timestamps COPY gives the sources.
COPY sensorstats/ /app/sensorstats/
RUN python -m compileall -q --invalidation-mode checked-hash /app/sensorstats

# --- runtime: the interpreter, the venv and the package; nothing else --------
FROM ${BASE_IMAGE}

# SENSORSTATS_PORT rather than a --port flag in CMD, so that
# `docker run -e SENSORSTATS_PORT=...` moves the app and its HEALTHCHECK together.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SENSORSTATS_PORT=8080 \
    PYTHONPATH=/app \
    PATH=/opt/venv/bin:$PATH

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app

WORKDIR /app

# Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 10001:10001

EXPOSE 8080

# The app drains on SIGTERM (/healthz turns 503, in-flight requests finish).
STOPSIGNAL SIGTERM

# Stdlib only: the slim image has no curl. urlopen raises on a 503, which
# makes the check fail. It asks the port the app listens on, over loopback
# (SENSORSTATS_HOST must include it: the default 0.0.0.0 does). Kubernetes
# ignores HEALTHCHECK and uses its probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SENSORSTATS_PORT', '8080'), timeout=2)"]

CMD ["python", "-m", "sensorstats"]
