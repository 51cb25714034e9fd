# syntax=docker/dockerfile:1
# The AGPO operator: kopf plus the agpo package with its [operator] extra (no torch, no vLLM).
# Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/agpo-dev/agpo-operator:0.1.0 .
# Runs as UID 65532 and works with a read-only root filesystem (the chart mounts /tmp).

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY api ./api
COPY cli ./cli
COPY operator ./operator
COPY rollout ./rollout
COPY trainer ./trainer
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# The wheel's own pins (kopf==1.45.2 etc.) come from pyproject.toml's [operator] extra.
RUN pip install --no-cache-dir "$(ls /wheels/agpo-*.whl)[operator]" \
    && rm -rf /wheels \
    && groupadd --gid 65532 agpo \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin agpo
USER 65532:65532
WORKDIR /tmp
# 9090: Prometheus metrics (agpo_operator_*); 8080: kopf's liveness endpoint /healthz.
EXPOSE 8080 9090
ENTRYPOINT ["kopf"]
CMD ["run", "-m", "agpo_operator", "--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
