"""Trainer entry point, one process per rank under torchrun.

On one machine (CPU, 2 processes)::

    AGPO_ROLLOUT_URLS=http://127.0.0.1:8000 torchrun --nproc-per-node=2 -m agpo_trainer \\
        --job manifests/samples/tiny-cpu.yaml

In a pod the operator sets ``AGPO_ROLLOUT_URLS``, ``AGPO_ROLLOUT_TOKEN`` (from a Secret),
``AGPO_CHECKPOINT_DIR``, ``AGPO_WEIGHT_SYNC_HOST/PORT``, ``AGPO_METRICS_PORT`` and torchrun's
rendezvous (``PET_*``); the job comes from ``--job`` or ``AGPO_JOB_FILE``. A user mistake or a
fault ends the process with one ``agpo-train: error: ...`` line and exit code 1.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys

from agpo_api.env import EnvVar

EXIT_FAILED = 1


def _init_distributed() -> None:
    import torch
    import torch.distributed as dist

    if int(os.environ.get(EnvVar.WORLD_SIZE, "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get(EnvVar.LOCAL_RANK, "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))


def _known_errors() -> tuple[type[BaseException], ...]:
    """User mistakes and faults that deserve one line, not a traceback."""
    from agpo_api import InvalidJobError
    from agpo_trainer.data import DataError
    from agpo_trainer.rewards.base import RewardFunctionError
    from agpo_trainer.rollout.client import RolloutError
    from agpo_trainer.rollout.http import HttpCallError
    from agpo_trainer.runtime import ConfigError

    found: list[type[BaseException]] = [
        InvalidJobError,
        DataError,
        RewardFunctionError,
        RolloutError,
        HttpCallError,
        ConfigError,
    ]
    try:
        from agpo_trainer.rollout.weight_sync import WeightSyncError

        found.append(WeightSyncError)
    except ImportError:
        pass
    return tuple(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agpo-train", description=__doc__.splitlines()[0])
    parser.add_argument("--job", default=os.environ.get(EnvVar.JOB_FILE), help="AGPOJob YAML")
    args = parser.parse_args(argv)
    rank = int(os.environ.get(EnvVar.RANK, "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )
    if not args.job:
        print("agpo-train: error: no job: pass --job FILE or set AGPO_JOB_FILE", file=sys.stderr)
        return EXIT_FAILED
    known = _known_errors()
    try:
        from agpo_api import load_job
        from agpo_trainer.runtime import Runtime
        from agpo_trainer.train import train

        job = load_job(args.job)
        _init_distributed()
        train(job, Runtime.from_env(job))
    except known as err:
        print(f"agpo-train: error (rank {rank}): {err}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        _shutdown()
    return 0


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
