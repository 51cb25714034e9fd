"""The trainer group of one ``agpo run``: torchrun on this machine with the entry point the pods
run, its environment (the one the operator writes, :class:`agpo_api.env.TrainerSettings`), and
what it left behind when it stopped: the termination log every rank writes and the trainer's
log. One group runs at a time; after a failure the launcher starts the next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agpo_api.env import EnvVar, TrainerSettings
from agpo_api.progress import TrainerProgress
from agpo_api.termination import FailureKind, parse_termination
from agpo_trainer.rollout.server import die_with_parent, free_port


def trainer_command(job_file: Path, procs: int) -> list[str]:
    """torchrun on this machine (single node), the same entry point the pods run."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={procs}", "-m", "agpo_trainer", "--job", str(job_file),
    ]  # fmt: skip


def trainer_env(
    *, urls: list[str], token: str, workdir: Path, metrics_port: int, sync_port: int,
    steps: int | None, base_dir: Path, termination_log: Path | None = None,
    discovery: Path | None = None,
) -> dict[str, str]:  # fmt: skip
    """The trainer's environment: its settings (written by :class:`TrainerSettings`, the one
    writer the trainer's parser mirrors) plus what Python needs here."""
    settings = TrainerSettings(
        rollout_urls=tuple(urls),
        # the elastic pool's file, read at each step boundary (else the fixed urls)
        rollout_discovery=f"file://{discovery}" if discovery else None,
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


@dataclass
class TrainerGroup:
    """torchrun with ``procs`` ranks training ``job_file`` into ``workdir``."""

    job_file: Path  # resolved: its folder is also where custom reward modules are found
    procs: int
    token: str
    workdir: Path
    metrics_port: int
    steps: int | None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def checkpoints(self) -> Path:
        return self.workdir / "checkpoints"

    @property
    def log(self) -> Path:
        return self.workdir / "logs" / "trainer.log"

    @property
    def termination(self) -> Path:
        return self.workdir / "logs" / "termination.log"

    def start(self, urls: list[str], discovery: Path | None = None) -> None:
        """Start a group against the servers at ``urls``, or those ``discovery`` lists at
        each step (the previous group must be stopped)."""
        # The previous group's line must not be read as this one's reason.
        self.termination.unlink(missing_ok=True)
        env = {
            **os.environ,
            **trainer_env(
                urls=urls, token=self.token, workdir=self.workdir, metrics_port=self.metrics_port,
                # Chosen anew for each group: the previous group's port may not be free yet.
                sync_port=free_port(), steps=self.steps, base_dir=self.job_file.parent,
                termination_log=self.termination, discovery=discovery,
            ),
        }  # fmt: skip
        self._process = _start_process(trainer_command(self.job_file, self.procs), env, self.log)

    def poll(self) -> int | None:
        """torchrun's exit code, or None while it runs (or before it was started)."""
        return None if self._process is None else self._process.poll()

    def stop(self) -> None:
        """Stop torchrun and its workers (a no-op once they have exited)."""
        if self._process is not None:
            _stop(self._process)

    def failure(self, code: int) -> str:
        """The exit of a failed group as the console says it: code, reason, log."""
        reason = _reason(self.termination, self.log, code)
        return f"trainer failed (exit {code}): {reason} (log: {self.log})"

    def failed_permanently(self) -> bool:
        """Whether a rank said the job can never succeed (``permanent:``): no restart then."""
        parsed = parse_termination(_read(self.termination))
        return parsed is not None and parsed.kind == FailureKind.PERMANENT

    def last_progress(self) -> TrainerProgress | None:
        """The ``/status`` the trainer wrote into its ``succeeded:`` termination line."""
        final = parse_termination(_read(self.termination))
        return TrainerProgress.model_validate(final.progress) if final else None


def _start_process(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip


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


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _reason(termination: Path, trainer_log: Path, code: int) -> str:
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
