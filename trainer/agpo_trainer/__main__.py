"""Trainer entry point, one process per rank under torchrun.

On one machine (CPU, 2 processes)::

    AGPO_ROLLOUT_URLS=http://127.0.0.1:8000 torchrun --nproc-per-node=2 -m agpo_trainer \\
        --job manifests/samples/tiny-cpu.yaml

In a pod the operator sets ``AGPO_ROLLOUT_URLS``, ``AGPO_ROLLOUT_TOKEN`` (from a Secret),
``AGPO_CHECKPOINT_DIR``, ``AGPO_WEIGHT_SYNC_HOST/PORT``, ``AGPO_METRICS_PORT`` and torchrun's
rendezvous (``PET_*``); the job comes from ``--job`` or ``AGPO_JOB_FILE``.

A user mistake or a fault ends the process with one ``agpo-train: error (rank N): ...`` line,
the same reason as a ``permanent:`` or ``transient:`` line in the termination log
(:mod:`agpo_api.termination`), and :class:`~agpo_api.termination.ExitCode` ``PERMANENT`` (78)
or ``TRANSIENT`` (75); torchrun replaces the code by its own 1, the line stays.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

from agpo_api.env import EnvVar
from agpo_api.termination import (
    TERMINATION_LOG,
    ExitCode,
    FailureKind,
    format_termination,
    parse_termination,
)


def _init_distributed() -> None:
    import torch
    import torch.distributed as dist

    if int(os.environ.get(EnvVar.WORLD_SIZE, "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get(EnvVar.LOCAL_RANK, "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))


def _permanent_errors() -> tuple[type[BaseException], ...]:
    """Errors that can never succeed on a retry: the spec, the data or the code is wrong."""
    from agpo_api import InvalidJobError
    from agpo_trainer.data import DataError
    from agpo_trainer.models.location import ModelError
    from agpo_trainer.prompts import PromptError
    from agpo_trainer.rewards.base import RewardFunctionError
    from agpo_trainer.rollout.client import ResponseShapeError
    from agpo_trainer.runtime import ConfigError

    return (
        InvalidJobError, DataError, RewardFunctionError, ConfigError, ModelError, PromptError,
        ResponseShapeError,
    )  # fmt: skip


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Faults of the moment (a server that went away): one line, and a restart may help."""
    from agpo_trainer.rollout.backend import WeightSyncFailed
    from agpo_trainer.rollout.client import RolloutError
    from agpo_trainer.rollout.http import HttpCallError

    found: list[type[BaseException]] = [RolloutError, HttpCallError, WeightSyncFailed]
    try:
        from agpo_trainer.rollout.weight_sync import WeightSyncError

        found.append(WeightSyncError)
    except ImportError:
        pass
    return tuple(found)


def termination_path(env: Mapping[str, str]) -> Path | None:
    """Where this process writes its termination line: ``AGPO_TERMINATION_LOG`` if set (``agpo
    run``, tests), else the kubelet's file when it exists (the kubelet creates it in every
    container, so its presence means "in a pod"); None outside a pod."""
    if env.get(EnvVar.TERMINATION_LOG):
        return Path(env[EnvVar.TERMINATION_LOG])
    default = Path(TERMINATION_LOG)
    return default if default.is_file() else None


def write_termination(path: Path | None, line: str) -> None:
    """Write ``line`` unless a ``permanent:`` line is already there: ranks that die of the
    first rank's failure (a broken collective) must not hide its cause."""
    if path is None:
        return
    try:
        previous = parse_termination(path.read_text(errors="replace")) if path.exists() else None
        new = parse_termination(line)
        if previous is not None and previous.permanent and not (new and new.permanent):
            return
        path.write_text(line)
    except OSError as err:  # never let reporting hide the failure itself
        print(f"agpo-train: cannot write {path}: {err}", file=sys.stderr)


def fail(rank: int, kind: FailureKind, reason: str) -> int:
    """Report a failure (stderr line + termination line); the exit code for ``kind``."""
    print(f"agpo-train: error (rank {rank}): {reason}", file=sys.stderr, flush=True)
    write_termination(termination_path(os.environ), format_termination(kind, reason))
    return ExitCode.PERMANENT if kind == FailureKind.PERMANENT else ExitCode.TRANSIENT


def _die_with_torchrun() -> None:
    """torchrun starts each worker in a session of its own, so a SIGKILLed torchrun (an OOM
    kill, `agpo run` stopping a group) would leave its workers waiting in a collective for
    its 30-minute timeout; this way the kernel stops them with it (Linux)."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # set by torchrun for its workers
        from agpo_trainer.rollout.server import die_with_parent

        die_with_parent()


def main(argv: list[str] | None = None) -> int:
    _die_with_torchrun()
    parser = argparse.ArgumentParser(prog="agpo-train", description=__doc__.splitlines()[0])
    parser.add_argument("--job", default=os.environ.get(EnvVar.JOB_FILE), help="AGPOJob YAML")
    args = parser.parse_args(argv)
    rank = int(os.environ.get(EnvVar.RANK, "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )
    if not args.job:
        return fail(rank, FailureKind.PERMANENT, "no job: pass --job FILE or set AGPO_JOB_FILE")
    permanent, transient = _permanent_errors(), _transient_errors()
    try:
        from agpo_api import load_job
        from agpo_trainer.runtime import Runtime
        from agpo_trainer.train import train

        job = load_job(args.job)
        _init_distributed()
        final = train(job, Runtime.from_env(job))
        if rank == 0 and final is not None:
            from agpo_api.termination import format_success

            write_termination(termination_path(os.environ), format_success(final))
    except permanent as err:
        return fail(rank, FailureKind.PERMANENT, str(err))
    except transient as err:
        return fail(rank, FailureKind.TRANSIENT, str(err))
    except Exception as err:
        # Unknown: keep the traceback for whoever debugs it, but the cause line is one line.
        traceback.print_exc()
        return fail(rank, FailureKind.TRANSIENT, f"{type(err).__name__}: {err}")
    finally:
        _shutdown()
    return ExitCode.OK


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _exit(code: int) -> None:
    """Exit with ``code`` without the interpreter's teardown: after a gloo process group the
    C++ destructors abort now and then (SIGABRT, "terminate called without an active
    exception"), which turned a finished rank into a failed one and cost agpo run a restart
    (the chaos test caught it after the last step). Logs and streams are flushed first; the
    termination message is already written."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
