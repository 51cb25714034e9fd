"""``agpo run``: the same AGPOJob on one machine.

Checks what it can before any server starts (:func:`preflight`: dataset, template, tokenizer,
prompt lengths, model, reward functions), starts ``rollout.replicas`` vLLM servers (with this
project's plugin and token check), waits for their health, runs torchrun with
``trainer.procsPerNode`` processes, and shows live progress from the trainer's ``/status``.

Failures get the operator's policy (:mod:`agpo_api.termination`): a trainer group that fails
transiently is started again from the newest checkpoint, and a dead vLLM server is started
again on its port (the trainer joins it again), together at most ``runPolicy.backoffLimit``
times, each said on the console; a ``permanent:`` failure ends the run at once. Every process
it started is stopped on success, failure or Ctrl-C (each child runs in its own session, so
whole process trees are signalled).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from agpo_api.env import EnvVar, TrainerSettings
from agpo_api.layout import STATUS_PATH
from agpo_api.models import AGPOJob
from agpo_api.progress import TrainerProgress
from agpo_api.termination import FailureKind, parse_termination
from agpo_trainer.preflight import LaunchError, preflight

EXIT_OK, EXIT_FAILED = 0, 1
POLL_S = 0.5


def trainer_command(job_file: Path, procs: int) -> list[str]:
    """torchrun on this machine (single node), the same entry point the pods run."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={procs}", "-m", "agpo_trainer", "--job", str(job_file),
    ]  # fmt: skip


def trainer_env(
    *, urls: list[str], token: str, workdir: Path, metrics_port: int, sync_port: int,
    steps: int | None, base_dir: Path, termination_log: Path | None = None,
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
        # Every rank reports why it stopped here; a permanent cause ends the run, as in a pod.
        **({EnvVar.TERMINATION_LOG.value: str(termination_log)} if termination_log else {}),
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


def run_local(
    job: AGPOJob,
    *,
    steps: int | None,
    workdir: Path | None,
    source: Path,
    fresh: bool = False,
) -> int:
    """Run ``job`` here; returns the process exit code. Prints one line on failure."""
    from rich.console import Console

    console = Console(stderr=True)
    # A supervisor's SIGTERM (or a plain `kill`) must unwind like Ctrl-C, so the servers and
    # torchrun are stopped instead of left behind as orphans. SIGINT too, explicitly: a
    # process started from a script's background job (`agpo run job.yaml &`) inherits an
    # ignored SIGINT, and Python then never raises KeyboardInterrupt for it.
    previous = {
        sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        return _run(job, steps=steps, workdir=workdir, source=source, console=console, fresh=fresh)
    except LaunchError as err:
        # Plain print: one line whatever the terminal width, no markup interpretation.
        print(f"agpo run: error: {err}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        console.print("agpo run: interrupted; every process stopped")
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def start_over(checkpoints: Path, *, fresh: bool, resume: bool) -> str:
    """What this run starts from, as a line for the console; with ``fresh``, the old
    checkpoints are moved aside (never deleted: they may be all that is left of a long run)."""
    from agpo_trainer.checkpoint import checkpoint_step, latest_checkpoint

    newest = latest_checkpoint(checkpoints)
    if fresh and checkpoints.exists():
        aside = checkpoints.with_name(f"{checkpoints.name}.{time.strftime('%Y%m%d-%H%M%S')}")
        checkpoints.rename(aside)
        return (
            f"--fresh: moved the old checkpoints {checkpoints} aside to {aside}; starting at step 0"
        )
    if newest is None:
        return "starting at step 0 (no checkpoint yet)"
    if not resume:
        return f"training.resume is off: starting at step 0 (ignoring {newest})"
    return (
        f"resuming from step {checkpoint_step(newest)} (checkpoint {newest}); "
        "pass --fresh to start over"
    )


def say(console: Any, line: str) -> None:
    """One console line, printed as it is: a reason may hold brackets rich would read as
    markup (``[/__w/pytorch/...]`` in a gloo error)."""
    console.print(line, markup=False, highlight=False)


@dataclass
class Restarts:
    """The launcher's share of ``runPolicy.backoffLimit``: trainer groups and servers
    started again, counted together as the operator counts them."""

    limit: int
    used: int = 0

    def take(self, what: str, console: Any) -> None:
        """Count one restart of ``what``, or raise when the limit is spent."""
        if self.used >= self.limit:
            raise LaunchError(f"{what}; runPolicy.backoffLimit={self.limit} restarts spent")
        self.used += 1
        say(console, f"agpo run: {what}; restart {self.used} of {self.limit}")


def _run(
    job: AGPOJob,
    *,
    steps: int | None,
    workdir: Path | None,
    source: Path,
    console: Any,
    fresh: bool = False,
) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agpo_trainer.rollout.server import ServerStartError, VLLMServer, free_port

    spec = job.spec
    cache = Path(os.environ.get(EnvVar.CACHE_DIR, Path.home() / ".cache" / "agpo"))
    os.environ[EnvVar.CACHE_DIR] = str(cache)
    model_dir = preflight(job, source.resolve().parent, cache)
    name = job.metadata.name or source.stem
    workdir = (workdir or Path("runs") / name).resolve()
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    say(console, start_over(workdir / "checkpoints", fresh=fresh, resume=spec.training.resume))
    token = secrets.token_urlsafe(24)  # per run; only the trainer and the servers know it
    total = min(spec.training.steps, steps) if steps else spec.training.steps
    restarts = Restarts(spec.run_policy.backoff_limit)

    def new_server(i: int, port: int | None = None) -> VLLMServer:
        return VLLMServer(
            model_dir,
            port=port,
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

    def wait_ready(server: VLLMServer) -> None:
        try:
            server.wait_ready(float(os.environ.get("AGPO_SERVER_START_TIMEOUT", "300")))
        except ServerStartError as err:
            raise LaunchError(str(err).splitlines()[0] + f" (log: {server.log_path})") from None

    with ExitStack() as stack:
        servers: list[VLLMServer] = []
        stack.callback(lambda: [s.stop() for s in servers])
        console.print(f"starting {spec.rollout.replicas} vLLM server(s) for {spec.model.name} ...")
        servers.extend(new_server(i).start() for i in range(spec.rollout.replicas))
        for server in servers:
            wait_ready(server)

        port = int(os.environ.get(EnvVar.METRICS_PORT) or spec.metrics.port)
        trainer_log = logs / "trainer.log"
        termination = logs / "termination.log"

        def start_trainer() -> subprocess.Popen[bytes]:
            termination.unlink(missing_ok=True)
            env = {
                **os.environ,
                **trainer_env(
                    urls=[s.url for s in servers], token=token, workdir=workdir,
                    metrics_port=port, sync_port=free_port(), steps=steps,
                    base_dir=source.resolve().parent, termination_log=termination,
                ),
            }  # fmt: skip
            return _start_process(
                trainer_command(source.resolve(), spec.trainer.procs_per_node), env, trainer_log
            )

        def restart_server(i: int) -> None:
            dead = servers[i]
            restarts.take(
                f"vLLM server {dead.url} died (exit {dead.poll()}); log: {dead.log_path}", console
            )
            dead.stop()  # whatever is left of its process group
            servers[i] = new_server(i, port=dead.port).start()  # same URL: the trainer rejoins
            wait_ready(servers[i])
            say(console, f"agpo run: vLLM server {servers[i].url} is serving again")

        console.print(f"starting torchrun with {spec.trainer.procs_per_node} process(es) ...")
        trainers = [start_trainer()]
        stack.callback(lambda: _stop(trainers[-1]))
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
        )  # fmt: skip
        with progress:
            task = progress.add_task("AGPO", total=total, info="waiting for the first step")
            while True:
                code = _supervise(trainers[-1], servers, restart_server, port, progress, task)
                if code == 0:
                    progress.update(task, completed=total)  # the last step may end between polls
                    break
                reason = _failure(termination, trainer_log, code)
                what = f"trainer failed (exit {code}): {reason} (log: {trainer_log})"
                kind = parse_termination(_read(termination))
                if kind is not None and kind.kind == FailureKind.PERMANENT:
                    raise LaunchError(what)  # it can never succeed: no restart
                _stop(trainers[-1])  # torchrun's workers, if any is left
                restarts.take(what, progress.console)
                again = start_over(workdir / "checkpoints", fresh=False, resume=True)
                say(progress.console, f"agpo run: {again}")
                trainers.append(start_trainer())
    final = parse_termination(_read(termination))
    figures = eval_summary(TrainerProgress.model_validate(final.progress) if final else None)
    say(
        console,
        f"done: {total} steps.\n{figures}  checkpoints: {workdir / 'checkpoints'}\n  logs: {logs}\n"
        f"  metrics were served on http://127.0.0.1:{port}/metrics while running",
    )
    return EXIT_OK


def _start_process(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    from agpo_trainer.rollout.server import die_with_parent

    with open(log, "ab") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip


def _supervise(
    trainer: subprocess.Popen[bytes],
    servers: list[Any],
    restart_server: Callable[[int], None],
    port: int,
    progress: Any,
    task: Any,
) -> int:
    """Show progress until the trainer exits (its code); a dead server is started again
    meanwhile (the trainer waits for it and joins it again)."""
    while (code := trainer.poll()) is None:
        for i, server in enumerate(servers):
            if server.poll() is not None:
                restart_server(i)
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
                    + (
                        f"  eval {status.eval_accuracy:.2f} (step {status.eval_step})"
                        if status.eval_accuracy is not None
                        else ""
                    )
                ),
            )
        time.sleep(POLL_S)
    return code


def eval_summary(progress: TrainerProgress | None) -> str:
    """The final evaluation's figures as summary lines (empty without an evaluation)."""
    if progress is None or progress.eval_accuracy is None:
        return ""
    parts = [f"greedy accuracy {progress.eval_accuracy:.3f}"]
    if progress.eval_mean_at_k is not None and progress.eval_pass_at_k is not None:
        parts.append(f"mean@k {progress.eval_mean_at_k:.3f}, pass@k {progress.eval_pass_at_k:.3f}")
    if progress.eval_reasoning_tokens is not None:
        parts.append(f"reasoning tokens (correct) {progress.eval_reasoning_tokens:.1f}")
    return f"  evaluation (step {progress.eval_step}): {'; '.join(parts)}\n"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _failure(termination: Path, trainer_log: Path, code: int) -> str:
    """Why the trainer stopped: its termination line, else its last error line, else how
    torchrun ended (a killed group writes nothing)."""
    parsed = parse_termination(_read(termination))
    if parsed is not None and parsed.kind is not None:
        return f"{parsed.kind.value}: {parsed.reason}"
    lines = [ln for ln in _read(trainer_log).splitlines() if "agpo-train: error" in ln]
    if lines:
        return lines[-1].split("agpo-train: ", 1)[1]
    if code < 0:
        return f"no reason given (torchrun was killed by {signal.Signals(-code).name})"
    return "no reason given (a rank was killed?)"
