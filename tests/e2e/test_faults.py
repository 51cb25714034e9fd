"""Bad input and faults end with one clear line and a non-zero exit: no hang, no orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from agpo_trainer.rollout.server import free_port

from e2e_support import job_file, kill_group, wait_for

pytestmark = [pytest.mark.e2e]
CORRECT = {"algorithm__correct": {"reward": "accuracy"}}


def custom(function: str) -> dict[str, Any]:
    return {"function": function, "bounds": {"min": 0.0, "max": 1.0}}


def agpo_run(
    job: Path, workdir: Path, *, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agpo_cli", "run", str(job), "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )  # fmt: skip


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "error" in ln.lower()]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"dataset__source": {"file": {"path": "missing.jsonl"}}}, "does not exist"),
        ({"dataset__source": {"file": {"path": "rows.jsonl"}}}, "row 2 has no field 'answer'"),
        # A custom reward needs its range (for zeroVariance: agpo) and a definition of a
        # correct answer to pass validation: the run must get as far as importing it.
        ({"algorithm__rewards": [custom("no_such_module:score")], **CORRECT}, "no_such_module"),
        ({"algorithm__rewards": [custom("my_rewards:nope")], **CORRECT}, "nope"),
        ({"training__checkpoint": {"pvc": "ckpts"}}, "spec.training.checkpoint.pvc"),
    ],
    ids=["missing-dataset", "malformed-row", "reward-module-missing", "reward-attr-missing", "pvc"],
)
def test_agpo_run_bad_input_fails_fast_with_one_line(
    tmp_path: Path, cache_dir: Path, overrides: dict[str, Any], expected: str
) -> None:
    (tmp_path / "rows.jsonl").write_text(
        json.dumps({"prompt": "1+1", "answer": "2"}) + "\n" + json.dumps({"prompt": "2+2"}) + "\n"
    )
    (tmp_path / "my_rewards.py").write_text("def score(p, c, a):\n    return [0.0] * len(c)\n")
    job = job_file(tmp_path, **overrides, training__formatWarmupSteps=0)
    out = agpo_run(job, tmp_path / "run", timeout=60)
    assert out.returncode == 1, out.stderr
    lines = error_lines(out.stderr)
    assert len(lines) == 1 and expected in lines[0], out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_trainer_with_unreachable_rollout_server_fails_within_timeout(
    tmp_path: Path, start_trainer: Any
) -> None:
    job = job_file(tmp_path)
    run = start_trainer(
        job, [f"http://127.0.0.1:{free_port()}"], "t", tmp_path / "run", AGPO_ROLLOUT_TIMEOUT="5"
    )
    code = run.wait(timeout_s=180)
    assert code != 0
    text = run.text()
    assert "agpo-train: error (rank 0):" in text and "127.0.0.1" in text, text[-2000:]


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_vllm_server_dying_mid_run_stops_everything(tmp_path: Path, cache_dir: Path) -> None:
    port = free_port()
    # backoffLimit 0: no restart of the server (tests/e2e/test_agpo_run_chaos.py has the restarts)
    job = job_file(tmp_path, training__steps=200, runPolicy={"backoffLimit": 0})
    proc = subprocess.Popen(
        [sys.executable, "-m", "agpo_cli", "run", str(job), "--workdir", str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # no short rollout timeout: the launcher itself must notice the dead server at once
        env={**os.environ, "AGPO_METRICS_PORT": str(port)},
        start_new_session=True,
    )  # fmt: skip
    try:

        def stepped() -> bool:
            try:
                return (
                    requests.get(f"http://127.0.0.1:{port}/status", timeout=1).json().get("step", 0)
                    >= 1
                )
            except (requests.RequestException, ValueError):
                return proc.poll() is not None

        wait_for(stepped, 300, "the first training step")
        assert proc.poll() is None, proc.communicate()[1]
        family = descendants(proc.pid)
        servers = [
            p for p in family if "vllm.entrypoints.openai.api_server" in " ".join(p.cmdline())
        ]
        assert servers, [p.cmdline() for p in family]
        servers[0].send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    assert proc.returncode == 1
    assert "vLLM server" in stderr and "died" in stderr, stderr
    alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"orphans: {[p.cmdline()[:4] for p in alive]}"


def alive(family: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in family:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 130), (signal.SIGKILL, -signal.SIGKILL)],
    ids=["ctrl-c", "sigterm", "sigkill"],
)
def test_stopping_agpo_run_stops_every_process(
    tmp_path: Path, cache_dir: Path, sig: int, code: int
) -> None:
    """Ctrl-C and SIGTERM unwind the launcher; even SIGKILL leaves no orphans, because every
    child is told to exit when its parent dies (PR_SET_PDEATHSIG)."""
    port = free_port()
    job = job_file(tmp_path, training__steps=200)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agpo_cli", "run", str(job), "--workdir", str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "AGPO_METRICS_PORT": str(port)}, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: any(
                "torch.distributed.run" in " ".join(p.cmdline())
                for p in alive(descendants(proc.pid))
            ),
            300,
            "torchrun to start",
        )
        family = descendants(proc.pid)
        proc.send_signal(sig)
        proc.communicate(timeout=120)
        # (a SIGKILLed launcher's children get SIGTERM from the kernel and stop on their own)
        wait_for(lambda: not alive(family), 90, "every child process to exit")
    finally:
        kill_group(proc)
    assert proc.returncode == code
