# syntax=docker/dockerfile:1.7
# One image for every role: `aiadmin api` (the default), `batcher`, `worker`, `run`, `dlq …` and, when built
# with EXTRAS=sim, `fake whatsapp|llm|crm`. The builder makes wheels; the runtime installs them and nothing
# else (no compiler, no source tree, no dev tools). deploy/image/*.sh are the two steps; .ci/deploy-checks runs
# the same scripts outside Docker, since CI has no daemon.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Extras installed besides the production set: "" (production), or "sim" for the stand-alone fakes.
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/dev.txt requirements/dev.txt
COPY system system
COPY simulator simulator
COPY loadtests loadtests
COPY reports reports
COPY --chmod=0755 deploy/image/build-wheels.sh /usr/local/bin/build-wheels
RUN build-wheels /src /wheels "${EXTRAS}"

FROM ${PYTHON_IMAGE} AS runtime
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/aiadmin/bin:$PATH \
    AIADMIN_HOST=0.0.0.0 \
    AIADMIN_PORT=8080
COPY --chmod=0755 deploy/image/install.sh /usr/local/bin/install-aiadmin
# The wheels are bind-mounted, not copied: they never become a layer of the runtime image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    install-aiadmin /wheels /opt/aiadmin "${EXTRAS}" \
    && groupadd --system --gid 10001 aiadmin \
    && useradd --system --uid 10001 --gid aiadmin --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin aiadmin
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
# Only the api role answers /health; compose and Kubernetes give the other roles their own checks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('AIADMIN_PORT', '8080'), timeout=2)"]
# SIGTERM (docker stop, Kubernetes) is what the processes stop gracefully on; give the worker its
# AIADMIN_WORKER_SHUTDOWN_S (30 s) plus margin: `stop_grace_period` in compose, terminationGracePeriodSeconds in k8s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["aiadmin"]
CMD ["api"]
