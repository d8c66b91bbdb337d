# sensorstats image: `docker build -t exercise:latest .`
# `docker run --rm -p 8080:8080 exercise:latest` serves with the embedded
# in-memory store; set SENSORSTATS_ETCD_ENDPOINTS to use etcd.
#
# The base is pinned by tag only: a digest cannot be verified without
# registry access. Where policy requires it, pin it after `docker pull` as
# python:3.12.12-slim-bookworm@sha256:<digest>, in both stages. No
# `# syntax=` line: the builder's own frontend suffices, so a build needs no
# pull beyond the base image.

# --- build: a self-contained virtualenv with the pinned dependencies ---------
FROM python:3.12.12-slim-bookworm AS build

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
FROM python:3.12.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
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
# makes the check fail. (Kubernetes ignores HEALTHCHECK and uses its probes.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

CMD ["python", "-m", "sensorstats", "--port", "8080"]
