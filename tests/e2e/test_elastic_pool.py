"""The rollout pool grows, shrinks, loses a server and has one stall, while the trainer runs
(issue #21): real vLLM servers, real torchrun, `agpo run` and `agpo scale`.

* a second server started by `agpo scale` mid-run joins at a step boundary, is pushed the
  current weights, then serves batches (its own access log shows the completions); scaled
  back to one, it leaves the pool; no step is lost and the data order is an uninterrupted
  run's;
* one of two servers SIGKILLed while the trainer runs (overlapped: a prefetch in flight most
  of the time): its requests go to the other, no step is lost or redone, the data order is
  unchanged, and the trainer group is never restarted;
* a server that stops answering `/agpo/push_weights` (fault injection in the plugin) is
  marked lagging after `weightSync.timeoutSeconds`, reported on `/status` (the operator's
  WeightSyncDegraded) and in the per-server push histogram, while the other server serves
  and the run finishes without a restart.

    .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/e2e/test_elastic_pool.py
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from agpo_api import load_job
from agpo_trainer.data import PromptSampler, load_examples
from agpo_trainer.models import resolve_model_path
from agpo_trainer.rollout.server import VLLMServer

from e2e_support import job_file, kill_group, step_records, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def expected_prompts(job: Path, steps: int) -> dict[int, list[int]]:
    """What an uninterrupted run draws at each step (the seeded sampler's order)."""
    spec = load_job(job).spec
    sampler = PromptSampler(load_examples(spec.dataset), spec.training.seed)
    n = spec.training.prompts_per_step
    return {s: [e.index for e in sampler.take(n)] for s in range(1, steps + 1)}


def completions_served(log: Path) -> int:
    """Completions requests a vLLM server answered, from its (uvicorn) access log."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0
    return len(re.findall(r'"POST /v1/completions HTTP/1\.1" 200', text))


def start_run(job: Path, workdir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agpo_cli", "run", str(job), "--workdir", str(workdir), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def scale(workdir: Path, replicas: int) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agpo_cli", "scale", str(workdir), "--rollout-replicas",
         str(replicas)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def reached(proc: subprocess.Popen[str], log: Path, step: int) -> bool:
    if proc.poll() is not None:
        pytest.fail(f"agpo run ended early: {proc.communicate()[1][-3000:]}")
    records = step_records(log)
    return bool(records) and records[-1]["step"] >= step


def assert_uninterrupted(job: Path, log: Path, steps: int) -> list[dict[str, Any]]:
    """Every step once, in order, with an uninterrupted run's prompts."""
    records = step_records(log)
    assert [r["step"] for r in records] == list(range(1, steps + 1))  # none lost or redone
    expected = expected_prompts(job, steps)
    for r in records:
        assert r["prompts"] == expected[r["step"]], f"data order differs at step {r['step']}"
    return records


def test_a_server_started_mid_run_joins_serves_batches_and_leaves_again(
    tmp_path: Path, cache_dir: Path
) -> None:
    steps = 24
    job = job_file(tmp_path, training__steps=steps, training__formatWarmupSteps=10)
    workdir = tmp_path / "run"
    log = workdir / "logs" / "trainer.log"
    proc = start_run(job, workdir, "--rollout-replicas", "1")
    try:
        wait_for(lambda: reached(proc, log, 2), 400, "step 2 with one server")
        # A tiny step takes half a second and a vLLM server a minute or more to start on 2
        # cores it shares with the trainer (on a cluster it has a node of its own): the
        # trainer is frozen until the new server is listed, so the join lands mid-run.
        trainer = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "agpo_trainer" in " ".join(p.cmdline())]  # fmt: skip
        for p in trainer:
            p.suspend()
        try:
            scale(workdir, 2)
            listed = workdir / "rollout" / "servers"
            wait_for(lambda: len(listed.read_text().split()) == 2, 400, "a second server listed")
        finally:
            for p in trainer:
                p.resume()
        both = wait_for(
            lambda: (
                reached(proc, log, 1)
                and [r for r in step_records(log) if r.get("servingServers") == 2]
            ),
            300,
            "a step with two servers serving",
        )
        joined_at = both[0]["step"]
        new_log = workdir / "logs" / "vllm-1.log"
        wait_for(lambda: completions_served(new_log) > 0, 120, "the new server to serve")
        wait_for(lambda: reached(proc, log, joined_at + 2), 300, "two more steps")
        scale(workdir, 1)
        _, stderr = proc.communicate(timeout=600)
    finally:
        kill_group(proc)  # type: ignore[arg-type]
    assert proc.returncode == 0, stderr[-4000:]
    records = assert_uninterrupted(job, log, steps)
    text = log.read_text()
    assert re.search(r"rollout server http://127\.0\.0\.1:\d+ joined, serving weight version", text)
    assert "left the pool" in text  # scaled back to one: dropped at a boundary
    assert records[0]["rolloutServers"] == 1 and records[-1]["rolloutServers"] == 1
    assert max(r["servingServers"] for r in records) == 2
    # a join never left a server behind, and a server scaled away is not "lagging" (a
    # stopped server asked before it is unlisted is silent, not behind)
    assert all(r["laggingServers"] == [] for r in records)
    assert "; restart " not in stderr  # nothing was restarted for the scaling
    assert "is up; the trainer joins it" in stderr and "stopped vLLM server" in stderr
    print(f"\njoined at step {joined_at}; new server answered {completions_served(new_log)} "
          "completions requests")  # fmt: skip


def test_killing_one_of_two_servers_loses_no_step_and_keeps_the_data_order(
    tmp_path: Path, cache_dir: Path
) -> None:
    steps = 12
    # Long completions: the rollout is most of a step, so the kill most likely lands in it.
    # maxStaleness 1: the next step's batch is generated (on a thread) while this one
    # trains, so requests are in flight most of the time, and the pool is refreshed at the
    # boundary before each prefetch.
    job = job_file(
        tmp_path, training__steps=steps, training__formatWarmupSteps=10,
        training__maxCompletionTokens=40, training__maxStaleness=1, rollout__maxModelLen=128,
    )  # fmt: skip
    workdir = tmp_path / "run"
    log = workdir / "logs" / "trainer.log"
    proc = start_run(job, workdir, "--rollout-replicas", "2")
    try:
        wait_for(lambda: reached(proc, log, 3), 400, "step 3 with two servers")
        victims = [
            p for p in psutil.Process(proc.pid).children(recursive=True)
            if "vllm.entrypoints.openai.api_server" in " ".join(p.cmdline())
        ]  # fmt: skip
        assert len(victims) == 2
        os.killpg(victims[1].pid, signal.SIGKILL)  # the API server leads its session
        killed_after = step_records(log)[-1]["step"]
        _, stderr = proc.communicate(timeout=600)
    finally:
        kill_group(proc)  # type: ignore[arg-type]
    assert proc.returncode == 0, stderr[-4000:]
    assert_uninterrupted(job, log, steps)
    assert "trainer failed" not in stderr  # the trainer group was never restarted
    assert stderr.count("; restart ") == 1 and "vLLM server" in stderr  # the server was
    print(f"\nkilled one of two servers after step {killed_after}; no step lost")


def test_a_stalled_push_degrades_the_sync_without_a_restart(
    tmp_path: Path, cache_dir: Path, start_trainer: Any
) -> None:
    steps, stall_after, timeout = 8, 3, 8
    job = job_file(
        tmp_path, training__steps=steps, training__formatWarmupSteps=10,
        rollout__weightSync={"backend": "gloo", "timeoutSeconds": timeout},
    )  # fmt: skip
    token = secrets.token_urlsafe(16)
    model = resolve_model_path("builtin:tiny", cache_dir)
    servers = [
        VLLMServer(model, token=token, log_path=tmp_path / "vllm-ok.log", max_model_len=128),
        VLLMServer(
            model, token=token, log_path=tmp_path / "vllm-stalls.log", max_model_len=128,
            extra_env={"AGPO_STALL_PUSH_AFTER_VERSION": str(stall_after)},
        ),
    ]  # fmt: skip
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready(300)
        ok, stalls = (s.url for s in servers)
        run = start_trainer(job, [ok, stalls], token, tmp_path / "trainer")

        def status() -> dict[str, Any]:
            try:
                return dict(requests.get(f"http://127.0.0.1:{run.metrics_port}/status",
                                         timeout=2).json())  # fmt: skip
            except requests.RequestException:
                return {}

        degraded = wait_for(
            lambda: run.process.poll() is None and status().get("laggingServers") == [stalls]
            and status(), 400, "the stalled server reported lagging on /status",
        )  # fmt: skip
        metrics = requests.get(f"http://127.0.0.1:{run.metrics_port}/metrics", timeout=5).text
        code = run.wait(600)
    finally:
        for s in servers:
            s.stop()
    assert code == 0, run.text()[-4000:]
    assert degraded["servingServers"] == 1 and degraded["rolloutServers"] == 2
    # one push past the timeout into the stalled server, recorded under its name
    count = re.search(
        rf'^agpo_server_push_duration_seconds_count\{{server="{re.escape(stalls)}"\}} (\S+)',
        metrics, re.M,
    )  # fmt: skip
    assert count and float(count.group(1)) >= stall_after + 1
    slow = re.search(
        rf'^agpo_server_push_duration_seconds_bucket\{{le="5\.0",server="{re.escape(stalls)}"\}} '
        r"(\S+)",
        metrics, re.M,
    )  # fmt: skip
    assert slow and float(slow.group(1)) < float(count.group(1))  # one took >= the timeout
    records = run.steps()
    assert [r["step"] for r in records] == list(range(1, steps + 1))  # one group, no restart
    late = [r for r in records if r["policyVersion"] > stall_after + 1]
    assert late and all(r["laggingServers"] == [stalls] for r in late)
    text = run.text()
    assert "weight sync degraded: 1 of 2 server(s)" in text and stalls in text
    assert "gets no prompts until it is pushed to again" in text
    print(f"\nstalled server lagging from version {stall_after + 1}; "
          f"{len(records)} steps, no restart")  # fmt: skip
