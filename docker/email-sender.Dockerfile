# EventPost email-sender: docker build -f docker/email-sender.Dockerfile -t eventpost/email-sender .
# The base is a slim Debian bookworm with Python 3.11, the version pyproject.toml requires.
# Where no registry can be reached, containers/base-image.sh builds an image of that name
# from Debian's own packages (see NOTES-containers.md).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- build stage: the pinned dependencies in a virtualenv, copied whole into the image ----
# Every Dockerfile of this repository has this same stage, word for word, so the engine builds
# it once and every image shares its layers (tests/containers check that they stay identical).
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /build
# Only the files that decide what gets installed, so code changes do not reinstall anything.
COPY requirements.txt pyproject.toml containers/runtime_requirements.py ./
# A wheelhouse that `invoke buildContainers` fills on the host (pip wheel -r requirements.txt),
# so the build needs no network and no certificate of the host; empty: wheels come from PyPI.
COPY containers/wheelhouse/ /wheelhouse/
# Runtime dependencies only (no pytest, ruff, mongomock, invoke, ...), each at the version
# requirements.txt pins, into /opt/venv.
RUN python -m venv /opt/venv \
    && python runtime_requirements.py > runtime.txt \
    && if [ -n "$(find /wheelhouse -name '*.whl' -print -quit)" ]; then set -- --no-index; fi \
    && /opt/venv/bin/pip install "$@" --find-links /wheelhouse \
        -c requirements.txt -r runtime.txt \
    && /opt/venv/bin/pip uninstall -y pip setuptools

# ---- run stage: the base, the virtualenv and this deployable's code, as a non-root user ----
FROM ${BASE_IMAGE}
# Unbuffered output: every JSON log line reaches the engine's log driver when it is written.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    DATA_DIR=/data
# A fixed numeric uid/gid, so volume ownership and "runAsNonRoot" checks do not depend on names.
RUN groupadd --gid 10001 eventpost \
    && useradd --no-log-init --uid 10001 --gid eventpost --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin eventpost \
    && mkdir -p /data \
    && chown eventpost:eventpost /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app

# Only what this worker runs and the shared toolkit: no dev tooling (devtools/), no tests,
# perf or tasks; .dockerignore keeps .git and the rest out of the context.
COPY eventpost/ eventpost/
# Its templates come along: they live in the package.
COPY email_sender/ email_sender/
# Compiled once here, so each start does not compile (and the code stays read-only at run time).
RUN python -m compileall -q .
LABEL org.opencontainers.image.title="eventpost-email-sender" \
      org.opencontainers.image.description="EventPost email-sender: email jobs to SMTP"
USER 10001:10001
# No HTTP port and so no HEALTHCHECK: it talks to RabbitMQ and its store only. It handles SIGTERM
# itself (finishes the message or round in hand, then exits 0), as PID 1 must.
# The command `invoke run` uses. SMTP_HOST/SMTP_PORT name the mail server (compose: Mailpit).
CMD ["python", "-m", "email_sender"]
