"""The environment contract between the operator (or ``agpo run``) and the pods it starts.

Every variable a component reads from another is named once here (:class:`EnvVar`). The
trainer's settings have one writer and one parser (:class:`TrainerSettings`): the operator's
trainer pods and ``agpo run`` write them, the trainer reads them, and a test round-trips them.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Union, get_args, get_origin, get_type_hints


class EnvVar(StrEnum):
    """Environment variable names shared across components."""

    # Trainer pods: written by the operator (or `agpo run`), read by agpo_trainer.
    JOB_FILE = "AGPO_JOB_FILE"
    ROLLOUT_URLS = "AGPO_ROLLOUT_URLS"
    # Where the trainer finds the rollout servers at each step boundary (an elastic pool):
    # dns://HOST:PORT (every address of a headless Service) or file:///PATH (one URL per line,
    # what `agpo run` writes). Unset: the fixed AGPO_ROLLOUT_URLS.
    ROLLOUT_DISCOVERY = "AGPO_ROLLOUT_DISCOVERY"
    ROLLOUT_TOKEN = "AGPO_ROLLOUT_TOKEN"  # rollout pods too; always from a Secret in pods
    CHECKPOINT_DIR = "AGPO_CHECKPOINT_DIR"
    WEIGHT_SYNC_HOST = "AGPO_WEIGHT_SYNC_HOST"
    WEIGHT_SYNC_PORT = "AGPO_WEIGHT_SYNC_PORT"
    METRICS_PORT = "AGPO_METRICS_PORT"
    MODEL_PATH = "AGPO_MODEL_PATH"
    DATASET_PATH = "AGPO_DATASET_PATH"
    BASE_DIR = "AGPO_BASE_DIR"  # where relative paths and custom reward modules live
    CACHE_DIR = "AGPO_CACHE_DIR"  # builtin models are built here once
    MAX_STEPS = "AGPO_MAX_STEPS"  # `agpo run --steps`
    MICRO_BATCH_SIZE = "AGPO_MICRO_BATCH_SIZE"
    ROLLOUT_TIMEOUT = "AGPO_ROLLOUT_TIMEOUT"
    CRASH_AFTER_STEP = "AGPO_CRASH_AFTER_STEP"  # fault injection for tests
    # Where the trainer writes its termination line (agpo_api.termination); unset: the
    # kubelet's /dev/termination-log when that file exists (in a pod), else nowhere.
    TERMINATION_LOG = "AGPO_TERMINATION_LOG"
    # Rollout pods: read by the vLLM plugin (agpo_rollout.auth) and vLLM itself.
    ROLLOUT_AUTH = "AGPO_ROLLOUT_AUTH"  # "disabled" switches the token check off (local only)
    AUTH_ALLOW_METRICS = "AGPO_AUTH_ALLOW_METRICS"  # "1": vLLM's /metrics without the token
    # Fault injection for tests: a push of a later version never gets an answer (the server
    # hangs in /agpo/push_weights, its workers never join the broadcast), as a wedged node.
    STALL_PUSH_AFTER_VERSION = "AGPO_STALL_PUSH_AFTER_VERSION"
    VLLM_DEV_MODE = "VLLM_SERVER_DEV_MODE"  # mounts vLLM's RL endpoints
    VLLM_CPU_KVCACHE = "VLLM_CPU_KVCACHE_SPACE"  # GiB of KV cache on CPU
    HF_TOKEN = "HF_TOKEN"
    # Experiment trackers' credentials (spec.tracking), read by their own libraries; in pods
    # only from the secretKeyRefs the spec names.
    MLFLOW_TRACKING_TOKEN = "MLFLOW_TRACKING_TOKEN"
    WANDB_API_KEY = "WANDB_API_KEY"
    # torchrun / Kubeflow PyTorchJob conventions, set by the operator in trainer pods.
    MASTER_ADDR = "MASTER_ADDR"
    MASTER_PORT = "MASTER_PORT"
    WORLD_SIZE = "WORLD_SIZE"
    RANK = "RANK"
    LOCAL_RANK = "LOCAL_RANK"
    PET_NNODES = "PET_NNODES"
    PET_NPROC_PER_NODE = "PET_NPROC_PER_NODE"
    PET_NODE_RANK = "PET_NODE_RANK"
    PET_MASTER_ADDR = "PET_MASTER_ADDR"
    PET_MASTER_PORT = "PET_MASTER_PORT"


#: ``AGPO_ROLLOUT_AUTH`` value that switches the token check off.
AUTH_DISABLED = "disabled"
#: Variables that decide whether a rollout server checks the token: never inherited, never
#: overridable from a job's ``env``.
AUTH_ENV = frozenset({EnvVar.ROLLOUT_TOKEN, EnvVar.ROLLOUT_AUTH, EnvVar.AUTH_ALLOW_METRICS})


class EnvError(ValueError):
    """An environment variable is missing or malformed; the message names it."""


def _var(name: EnvVar, default: Any = None) -> Any:
    return field(default=default, metadata={"env": name})


@dataclass(frozen=True)
class TrainerSettings:
    """What a trainer process is told through its environment (besides torchrun's ranks).

    ``None`` means "not set": the trainer falls back to the job's spec or its own default.
    """

    rollout_urls: tuple[str, ...] = _var(EnvVar.ROLLOUT_URLS, ())
    rollout_discovery: str | None = _var(EnvVar.ROLLOUT_DISCOVERY)
    rollout_token: str | None = _var(EnvVar.ROLLOUT_TOKEN)
    checkpoint_dir: str | None = _var(EnvVar.CHECKPOINT_DIR)
    weight_sync_host: str | None = _var(EnvVar.WEIGHT_SYNC_HOST)  # None: the pod's address
    weight_sync_port: int | None = _var(EnvVar.WEIGHT_SYNC_PORT)
    metrics_port: int | None = _var(EnvVar.METRICS_PORT)  # 0: no metrics server
    model_path: str | None = _var(EnvVar.MODEL_PATH)
    dataset_path: str | None = _var(EnvVar.DATASET_PATH)
    base_dir: str | None = _var(EnvVar.BASE_DIR)
    cache_dir: str | None = _var(EnvVar.CACHE_DIR)
    max_steps: int | None = _var(EnvVar.MAX_STEPS)
    micro_batch_size: int | None = _var(EnvVar.MICRO_BATCH_SIZE)
    rollout_timeout_s: float | None = _var(EnvVar.ROLLOUT_TIMEOUT)
    crash_after_step: int | None = _var(EnvVar.CRASH_AFTER_STEP)

    def to_env(self) -> dict[str, str]:
        """The writer: ``{name: value}`` for every field that is set, in field order."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or value == ():
                continue
            out[f.metadata["env"].value] = (
                ",".join(value) if isinstance(value, tuple) else str(value)
            )
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TrainerSettings:
        """The parser: unset or empty variables stay ``None``; a malformed one raises
        :class:`EnvError` naming it."""
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            raw = env.get(name, "")
            if raw == "":
                continue
            values[f.name] = _parse(name, raw, hints[f.name])
        return cls(**values)


def _parse(name: str, raw: str, hint: Any) -> Any:
    if get_origin(hint) is tuple:
        return tuple(part for part in raw.split(",") if part)
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
    try:
        return hint(raw)
    except ValueError:
        raise EnvError(f"{name}={raw!r} is not a valid {hint.__name__}") from None
