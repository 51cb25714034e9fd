"""Where a trainer process runs: torchrun's ranks plus the settings the operator (or ``agpo
run``) passes in ``AGPO_*`` variables, parsed once by :class:`agpo_api.env.TrainerSettings`.

The defaults for what the environment leaves unset live here, next to each other: the job's
spec where it has a value (metrics and weight-sync ports), otherwise the trainer's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agpo_api.env import EnvError, EnvVar, TrainerSettings
from agpo_api.models import AGPOJob

MICRO_BATCH_SIZE = 64  # sequences per forward pass
ROLLOUT_TIMEOUT_S = 300.0  # how long a rollout server may be unreachable before the job fails


class ConfigError(ValueError):
    """The trainer's environment is incomplete; the message says which variable."""


@dataclass(frozen=True)
class Runtime:
    """One rank's place in the job and the pod/launcher settings it was given."""

    rank: int
    world_size: int
    local_rank: int
    rollout_urls: list[str]
    rollout_token: str | None
    checkpoint_dir: Path
    metrics_port: int | None  # None: no metrics server
    weight_sync_host: str | None  # None: the pod's address
    weight_sync_port: int
    cache_dir: Path
    base_dir: Path | None
    max_steps: int | None = None
    micro_batch_size: int = MICRO_BATCH_SIZE
    rollout_timeout_s: float = ROLLOUT_TIMEOUT_S
    # Fault injection for tests: after this step (and its checkpoint) rank 0 SIGKILLs the
    # whole torchrun process group, as an OOM kill or a node loss would.
    crash_after_step: int | None = None
    # In pods the operator says where it mounted the weights and the dataset file.
    model_path: str | None = None
    dataset_path: str | None = None
    # Where the pool finds its servers at each step boundary (agpo_trainer.rollout.discovery);
    # None: the fixed rollout_urls.
    rollout_discovery: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 talks to the rollout servers, logs, checkpoints and serves metrics."""
        return self.rank == 0

    def total_steps(self, spec_steps: int) -> int:
        """``training.steps``, cut short by ``AGPO_MAX_STEPS`` (``agpo run --steps``)."""
        return min(spec_steps, self.max_steps) if self.max_steps else spec_steps

    @staticmethod
    def single(workdir: Path, cache_dir: Path) -> Runtime:
        """One process and no rollout servers (``train`` with an in-process backend: the
        study, the gate, tests): checkpoints under ``workdir``, no metrics server."""
        return Runtime(
            rank=0, world_size=1, local_rank=0, rollout_urls=[], rollout_token=None,
            checkpoint_dir=workdir / "checkpoints", metrics_port=None, weight_sync_host=None,
            weight_sync_port=0, cache_dir=cache_dir, base_dir=None,
        )  # fmt: skip

    @staticmethod
    def from_env(job: AGPOJob, env: Mapping[str, str] | None = None) -> Runtime:
        e = os.environ if env is None else env
        try:
            s = TrainerSettings.from_env(e)
        except EnvError as err:
            raise ConfigError(str(err)) from None
        if not s.rollout_urls and not s.rollout_discovery:
            raise ConfigError(
                f"{EnvVar.ROLLOUT_URLS.value} is empty: set the vLLM server URLs (comma-separated)"
                f" or {EnvVar.ROLLOUT_DISCOVERY.value} (dns://HOST:PORT or file:///PATH)"
            )
        if s.rollout_discovery:
            from agpo_trainer.rollout.discovery import DiscoveryError, discovery_from

            try:
                discovery_from(s.rollout_discovery)
            except DiscoveryError as err:
                where = f"{EnvVar.ROLLOUT_DISCOVERY.value}={s.rollout_discovery!r}"
                raise ConfigError(str(err) if where in str(err) else f"{where}: {err}") from None
        spec = job.spec
        name = job.metadata.name or "agpojob"
        port = spec.metrics.port if s.metrics_port is None else s.metrics_port
        return Runtime(
            rank=int(e.get(EnvVar.RANK, "0")),
            world_size=int(e.get(EnvVar.WORLD_SIZE, "1")),
            local_rank=int(e.get(EnvVar.LOCAL_RANK, "0")),
            rollout_urls=list(s.rollout_urls),
            rollout_token=s.rollout_token,
            checkpoint_dir=Path(s.checkpoint_dir or f"runs/{name}/checkpoints"),
            metrics_port=port or None,  # 0 switches the metrics server off
            weight_sync_host=s.weight_sync_host,
            weight_sync_port=(
                spec.rollout.weight_sync.port if s.weight_sync_port is None else s.weight_sync_port
            ),
            cache_dir=Path(s.cache_dir) if s.cache_dir else Path.home() / ".cache" / "agpo",
            base_dir=Path(s.base_dir) if s.base_dir else None,
            max_steps=s.max_steps,
            micro_batch_size=MICRO_BATCH_SIZE if s.micro_batch_size is None else s.micro_batch_size,
            rollout_timeout_s=ROLLOUT_TIMEOUT_S
            if s.rollout_timeout_s is None
            else s.rollout_timeout_s,
            crash_after_step=s.crash_after_step,
            model_path=s.model_path,
            dataset_path=s.dataset_path,
            rollout_discovery=s.rollout_discovery,
        )
