"""Chaos on `agpo run`: one trainer rank, the whole trainer group and the vLLM server are
SIGKILLed at seeded random moments of a 30-step CPU run (checkpoint every 5 steps).

The run must finish; every kill may cost at most `checkpoint.everySteps` steps (counted from
the step records of `logs/trainer.log`); the prompts of every step must be those of an
uninterrupted run (the seeded sampler's order: the job never resamples or skips prompts);
and no process may be left. Everything waits on conditions (step records, process states),
never on plain sleeps.

    .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/e2e/test_agpo_run_chaos.py
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agpo_api import load_job
from agpo_trainer.data import PromptSampler, load_examples

from e2e_support import job_file, kill_group, step_records, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEED = int(os.environ.get("AGPO_CHAOS_SEED", "20261201"))
STEPS, EVERY = 30, 5
KINDS = ("trainer rank", "trainer group", "vLLM server")


def family(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def alive(procs: dict[int, psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs.values():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def victims(kind: str, launcher: int) -> list[psutil.Process]:
    procs = family(launcher)
    if kind == "trainer rank":
        return [p for p in procs if "-m agpo_trainer" in cmd(p) and "distributed.run" not in cmd(p)]
    if kind == "trainer group":
        return [p for p in procs if "torch.distributed.run" in cmd(p)]
    return [p for p in procs if "vllm.entrypoints.openai.api_server" in cmd(p)]


def kill(kind: str, launcher: int, rng: random.Random) -> None:
    found = wait_for(lambda: victims(kind, launcher), 120, f"a {kind} to kill")
    victim = rng.choice(found)
    if kind == "trainer rank":
        victim.send_signal(signal.SIGKILL)  # torchrun then stops the other rank
    elif kind == "trainer group":  # torchrun and its workers (each in a session of its own)
        for p in [victim, *victim.children(recursive=True)]:
            p.send_signal(signal.SIGKILL)
    else:  # the API server leads its session: engine core and workers go with it
        os.killpg(victim.pid, signal.SIGKILL)


def expected_prompts(job: Path) -> dict[int, list[int]]:
    spec = load_job(job).spec
    sampler = PromptSampler(load_examples(spec.dataset), spec.training.seed)
    n = spec.training.prompts_per_step
    return {s: [e.index for e in sampler.take(n)] for s in range(1, STEPS + 1)}


def test_agpo_run_survives_kills_and_loses_at_most_a_checkpoint_interval_each(
    tmp_path: Path, cache_dir: Path
) -> None:
    rng = random.Random(SEED)
    kinds = list(KINDS)
    rng.shuffle(kinds)
    # Kill moments: a step record to wait for, spread over the run, >= 3 steps apart.
    moments = sorted(rng.sample(range(3, STEPS - 6, 3), len(kinds)))
    job = job_file(
        tmp_path,
        training__steps=STEPS,
        training__formatWarmupSteps=10,
        training__checkpoint={"everySteps": EVERY, "keep": 10},
        runPolicy={"backoffLimit": len(kinds) + 2},
    )
    workdir = tmp_path / "run"
    log = workdir / "logs" / "trainer.log"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agpo_cli", "run", str(job), "--workdir", str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    seen: dict[int, psutil.Process] = {}
    kills: list[tuple[str, int]] = []
    try:
        for kind, moment in zip(kinds, moments, strict=True):

            def reached(at: int = moment) -> bool:
                for p in family(proc.pid):
                    seen.setdefault(p.pid, p)
                if proc.poll() is not None:
                    pytest.fail(f"agpo run ended early: {proc.communicate()[1][-3000:]}")
                records = step_records(log)
                return bool(records) and records[-1]["step"] >= at

            wait_for(reached, 300, f"step {moment} before killing the {kind}")
            kills.append((kind, step_records(log)[-1]["step"]))
            kill(kind, proc.pid, rng)
        _, stderr = proc.communicate(timeout=400)
    finally:
        kill_group(proc)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, stderr[-4000:]

    records = step_records(log)
    # Steps lost per failure: where the record sequence goes back, the steps redone.
    lost = [
        prev["step"] - (cur["step"] - 1)
        for prev, cur in itertools.pairwise(records)
        if cur["step"] <= prev["step"]
    ]
    assert len(lost) <= len(kills), (lost, kills)
    assert all(0 <= n <= EVERY for n in lost), lost
    final = {r["step"]: r for r in records}  # the last record of each step counts
    assert sorted(final) == list(range(1, STEPS + 1))
    expected = expected_prompts(job)
    for step, record in final.items():
        assert record["prompts"] == expected[step], f"data order differs at step {step}"
    restarts = stderr.count("; restart ")
    assert restarts == len(kills), stderr[-4000:]  # each kill restarted one thing, said so
    wait_for(lambda: not alive(seen), 60, "every process of the run to exit")
    orphans = alive(seen)
    assert orphans == []
    print(
        f"\nchaos seed {SEED}: kills {kills}, restarts {restarts}, steps lost per trainer "
        f"failure {lost}, orphans {len(orphans)}, {len(seen)} processes watched, "
        f"{elapsed:.0f}s"
    )
