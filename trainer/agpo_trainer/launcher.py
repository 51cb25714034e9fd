"""``agpo run``: the same AGPOJob on one machine.

Starts ``rollout.replicas`` vLLM servers (with this project's plugin and token check), waits
for their health, runs torchrun with ``trainer.procsPerNode`` processes, shows live progress
from the trainer's ``/status``, and stops every process it started on success, failure or
Ctrl-C (each child runs in its own session, so whole process trees are signalled).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

from agpo_api.env import EnvVar, TrainerSettings
from agpo_api.layout import STATUS_PATH
from agpo_api.models import AGPOJob
from agpo_api.progress import TrainerProgress

EXIT_OK, EXIT_FAILED = 0, 1
POLL_S = 0.5


class LaunchError(RuntimeError):
    """Something the launcher started failed; the message says what and where the log is."""


def trainer_command(job_file: Path, procs: int) -> list[str]:
    """torchrun on this machine (single node), the same entry point the pods run."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={procs}", "-m", "agpo_trainer", "--job", str(job_file),
    ]  # fmt: skip


def trainer_env(
    *, urls: list[str], token: str, workdir: Path, metrics_port: int, sync_port: int,
    steps: int | None, base_dir: Path,
) -> dict[str, str]:  # fmt: skip
    """The trainer's environment: its settings (written by :class:`TrainerSettings`, the one
    writer the trainer's parser mirrors) plus what Python needs here."""
    settings = TrainerSettings(
        rollout_urls=tuple(urls),
        rollout_token=token,
        checkpoint_dir=str(workdir / "checkpoints"),
        weight_sync_host="127.0.0.1",
        weight_sync_port=sync_port,
        metrics_port=metrics_port,
        base_dir=str(base_dir),
        max_steps=steps,
    )
    return {
        **settings.to_env(),
        # Custom reward modules may sit next to the job file.
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(base_dir), os.environ.get("PYTHONPATH")) if p
        ),
        "PYTHONUNBUFFERED": "1",
        # 2 ranks on a 2-core machine next to vLLM: one thread each avoids oversubscription.
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL after ``grace_s``."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _error_line(log: Path) -> str:
    """The trainer's one-line error, if it printed one."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    found = [ln for ln in lines if "agpo-train: error" in ln]
    return found[-1].split("agpo-train: ", 1)[1] if found else (lines[-1] if lines else "")


def _status(port: int) -> TrainerProgress | None:
    """The trainer's ``/status``, or None while it is not serving (yet)."""
    try:
        data = requests.get(f"http://127.0.0.1:{port}{STATUS_PATH}", timeout=1).json()
        return TrainerProgress.model_validate(data)
    except (requests.RequestException, ValueError):  # pydantic's ValidationError included
        return None


def preflight(job: AGPOJob, base_dir: Path) -> None:
    """Check what can be checked before minutes of server start-up: data and rewards."""
    from agpo_trainer.data import DataError, load_examples
    from agpo_trainer.rewards.base import RewardFunctionError
    from agpo_trainer.rewards.scoring import get_reward_function

    spec = job.spec
    pvcs = [
        (where, claim)
        for where, claim in (
            ("spec.model.source.pvc", spec.model.source and spec.model.source.pvc),
            (
                "spec.dataset.source.file.pvc",
                spec.dataset.source.file and spec.dataset.source.file.pvc,
            ),
            ("spec.training.checkpoint.pvc", spec.training.checkpoint.pvc),
        )
        if claim
    ]
    if pvcs:
        where, claim = pvcs[0]
        raise LaunchError(
            f"{where}: agpo run cannot mount PersistentVolumeClaim {claim!r} on this machine; "
            "use a local path instead (e.g. source.path / file.path) or run it in a cluster"
        )
    # Custom reward modules may sit next to the job file (the trainer gets it on PYTHONPATH).
    sys.path.insert(0, str(base_dir))
    try:
        load_examples(job.spec.dataset, base_dir)
        for reward in job.spec.algorithm.rewards:
            get_reward_function(reward.name or reward.function or "")
    except (DataError, RewardFunctionError) as err:
        raise LaunchError(str(err)) from None


def run_local(job: AGPOJob, *, steps: int | None, workdir: Path | None, source: Path) -> int:
    """Run ``job`` here; returns the process exit code. Prints one line on failure."""
    from rich.console import Console

    console = Console(stderr=True)
    # A supervisor's SIGTERM (or a plain `kill`) must unwind like Ctrl-C, so the servers and
    # torchrun are stopped instead of left behind as orphans.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _run(job, steps=steps, workdir=workdir, source=source, console=console)
    except LaunchError as err:
        # Plain print: one line whatever the terminal width, no markup interpretation.
        print(f"agpo run: error: {err}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        console.print("agpo run: interrupted; every process stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(
    job: AGPOJob, *, steps: int | None, workdir: Path | None, source: Path, console: Any
) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agpo_trainer.models import model_location
    from agpo_trainer.rollout.server import (
        ServerStartError,
        VLLMServer,
        die_with_parent,
        free_port,
    )

    spec = job.spec
    preflight(job, source.resolve().parent)
    name = job.metadata.name or source.stem
    workdir = (workdir or Path("runs") / name).resolve()
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get(EnvVar.CACHE_DIR, Path.home() / ".cache" / "agpo"))
    os.environ[EnvVar.CACHE_DIR] = str(cache)
    model_dir = model_location(spec.model, cache)
    token = secrets.token_urlsafe(24)  # per run; only the trainer and the servers know it
    total = min(spec.training.steps, steps) if steps else spec.training.steps

    with ExitStack() as stack:
        servers = []
        console.print(f"starting {spec.rollout.replicas} vLLM server(s) for {spec.model.name} ...")
        for i in range(spec.rollout.replicas):
            server = VLLMServer(
                model_dir,
                token=token,
                log_path=logs / f"vllm-{i}.log",
                device="cuda" if spec.rollout.gpus_per_replica else "cpu",
                dtype=spec.model.dtype,
                max_model_len=spec.rollout.max_model_len,
                gpu_memory_utilization=spec.rollout.gpu_memory_utilization,
                weight_transfer_backend=spec.rollout.weight_sync.backend,
                seed=spec.training.seed,
                extra_args=spec.rollout.extra_args,
            )
            servers.append(server.start())
            stack.callback(server.stop)
        try:
            for server in servers:
                server.wait_ready(float(os.environ.get("AGPO_SERVER_START_TIMEOUT", "300")))
        except ServerStartError as err:
            raise LaunchError(str(err).splitlines()[0] + f" (log: {server.log_path})") from None

        port = int(os.environ.get(EnvVar.METRICS_PORT) or spec.metrics.port)
        env = {
            **os.environ,
            **trainer_env(
                urls=[s.url for s in servers], token=token, workdir=workdir, metrics_port=port,
                sync_port=free_port(), steps=steps, base_dir=source.resolve().parent,
            ),
        }  # fmt: skip
        trainer_log = logs / "trainer.log"
        console.print(f"starting torchrun with {spec.trainer.procs_per_node} process(es) ...")
        with open(trainer_log, "ab") as out:
            trainer = subprocess.Popen(
                trainer_command(source.resolve(), spec.trainer.procs_per_node),
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        stack.callback(_stop, trainer)

        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
        )  # fmt: skip
        with progress:
            task = progress.add_task("AGPO", total=total, info="waiting for the first step")
            while (code := trainer.poll()) is None:
                dead = [s for s in servers if s.poll() is not None]
                if dead:
                    raise LaunchError(
                        f"vLLM server {dead[0].url} died (exit {dead[0].poll()}); "
                        f"log: {dead[0].log_path}"
                    )
                status = _status(port)
                if status and status.step:
                    progress.update(
                        task,
                        completed=status.step,
                        info=(
                            f"reward {status.reward_mean or 0:.3f}  "
                            f"acc {status.accuracy or 0:.2f}  "
                            f"tokens {status.completion_tokens_mean or 0:.1f}  "
                            f"step {status.step_seconds or 0:.2f}s"
                        ),
                    )
                time.sleep(POLL_S)
            if code == 0:  # the last step may finish between two polls
                progress.update(task, completed=total)
        if code != 0:
            raise LaunchError(
                f"trainer failed (exit {code}): {_error_line(trainer_log)} (log: {trainer_log})"
            )
    console.print(
        f"done: {total} steps.\n  checkpoints: {workdir / 'checkpoints'}\n  logs: {logs}\n"
        f"  metrics were served on http://127.0.0.1:{port}/metrics while running"
    )
    return EXIT_OK
