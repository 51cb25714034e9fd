"""``agpo run``: the same AGPOJob on one machine.

Checks what it can before any server starts (:mod:`agpo_trainer.preflight`: dataset, template,
tokenizer, prompt lengths, model, reward functions), starts ``rollout.replicas`` vLLM servers
(with this project's plugin and token check; ``agpo scale`` changes their number mid-run), waits for their health, runs torchrun with
``trainer.procsPerNode`` processes, and shows live progress from the trainer's ``/status``.
The parts are in :mod:`agpo_trainer.local`; this module runs them in order.

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
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from agpo_api.env import EnvVar
from agpo_api.models import AGPOJob
from agpo_trainer.local.console import StepBar, done_summary, read_status, say
from agpo_trainer.local.restarts import Restarts, start_over
from agpo_trainer.local.servers import LocalServers
from agpo_trainer.local.trainer_group import TrainerGroup
from agpo_trainer.preflight import LaunchError, export_cache_dir, preflight

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK, EXIT_FAILED = 0, 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
POLL_S = 0.5


def run_local(
    job: AGPOJob,
    *,
    steps: int | None,
    workdir: Path | None,
    source: Path,
    fresh: bool = False,
    rollout_replicas: int | None = None,
) -> int:
    """Run ``job`` here; returns the process exit code. Prints one line on failure.
    ``rollout_replicas`` starts that many servers instead of ``rollout.replicas``."""
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
        return _run(
            job, steps=steps, workdir=workdir, source=source, console=console, fresh=fresh,
            replicas=rollout_replicas or job.spec.rollout.replicas,
        )  # fmt: skip
    except LaunchError as err:
        # Plain print: one line whatever the terminal width, no markup interpretation.
        print(f"agpo run: error: {err}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        console.print("agpo run: interrupted; every process stopped")
        return EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(
    job: AGPOJob,
    *,
    steps: int | None,
    workdir: Path | None,
    source: Path,
    console: Console,
    fresh: bool = False,
    replicas: int = 1,
) -> int:
    spec = job.spec
    job_file = source.resolve()
    # agpo run draws one progress bar; a builtin model's save ("Writing model shards") is noise
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model_dir = preflight(job, job_file.parent, export_cache_dir())  # nothing is started yet
    workdir = run_workdir(job, source, workdir)
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    say(console, start_over(workdir / "checkpoints", fresh=fresh, resume=spec.training.resume))
    token = secrets.token_urlsafe(24)  # per run; only the trainer and the servers know it
    total = min(spec.training.steps, steps) if steps else spec.training.steps
    restarts = Restarts(spec.run_policy.backoff_limit)

    with ExitStack() as stack:  # stops, in reverse order, what was started
        servers = LocalServers(job, model_dir, token=token, workdir=workdir, replicas=replicas)
        stack.callback(servers.stop)
        console.print(f"starting {replicas} vLLM server(s) for {spec.model.name} ...")
        servers.start()

        group = TrainerGroup(
            job_file=job_file,
            procs=spec.trainer.procs_per_node,
            token=token,
            workdir=workdir,
            metrics_port=int(os.environ.get(EnvVar.METRICS_PORT) or spec.metrics.port),
            steps=steps,
        )
        console.print(f"starting torchrun with {spec.trainer.procs_per_node} process(es) ...")
        group.start(servers.urls, servers.discovery)
        stack.callback(group.stop)
        with StepBar(console, total) as bar:
            _train(group, servers, restarts, bar)
    final = group.last_progress()
    say(console, done_summary(total, final, workdir=workdir, metrics_port=group.metrics_port))
    return EXIT_OK


def _train(group: TrainerGroup, servers: LocalServers, restarts: Restarts, bar: StepBar) -> None:
    """Until a trainer group succeeds: a failed one is started again from the newest
    checkpoint, unless it failed permanently or the restarts are spent (both raise)."""
    while (code := _watch(group, servers, restarts, bar)) != 0:
        what = group.failure(code)
        if group.failed_permanently():
            raise LaunchError(what)  # it can never succeed: no restart
        group.stop()  # torchrun's workers, if any is left
        restarts.take(what, bar.console)
        again = start_over(group.checkpoints, fresh=False, resume=True)
        say(bar.console, f"agpo run: {again}")
        group.start(servers.urls, servers.discovery)
    bar.finish()


def _watch(group: TrainerGroup, servers: LocalServers, restarts: Restarts, bar: StepBar) -> int:
    """Show progress until the trainer group exits (its code); meanwhile a dead server is
    started again (the trainer joins it again) and the pool follows ``agpo scale``."""
    while (code := group.poll()) is None:
        servers.replace_dead(restarts, bar.console)
        servers.follow_scale(bar.console)
        bar.show(read_status(group.metrics_port))
        time.sleep(POLL_S)
    return code


def run_workdir(job: AGPOJob, source: Path, workdir: Path | None = None) -> Path:
    """Where ``agpo run`` keeps a job's checkpoints and logs: ``--workdir``, else
    ``./runs/<name>`` (the file's stem for a job without a name)."""
    return (workdir or Path("runs") / (job.metadata.name or source.stem)).resolve()
