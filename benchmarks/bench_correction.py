"""The cost of the rollout correction (``algorithm.rolloutCorrection``) in the update: the
trainer's extra forward pass that recomputes the old log-probs, as a share of the train time.

Usage (from the repository root, under the heavy-job lock)::

    flock /tmp/agpo-heavy.lock .venv/bin/python benchmarks/bench_correction.py \
        [--models tiny,smollm2] [--repeats 5]

For each model the job is its sample (``tiny``: ``manifests/samples/tiny-cpu.yaml``;
``smollm2``: ``manifests/samples/smollm2-cpu.yaml``, the ``smollm2`` extra), resolved, and its
``Policy`` is loaded as the trainer loads it (one process, every CPU's torch threads). The
batch is one step of the sample (``promptsPerStep x groupSize`` sequences) of random tokens
with the lengths its ``agpo run`` produced (``LENGTHS``: the mean prompt and completion
tokens of the measured runs, docs/benchmarks.md), so the cost is the one a real step pays.
Alternating (the order flips every repeat), medians of ``--repeats``:

- ``none``: ``update.train_step`` as the sample runs it;
- ``tis``: the same with ``rolloutCorrection: {mode: tis}``: ``trainer_logprobs`` (no-grad
  forward, chunked) before the update, and the weights in the loss.

Printed: both medians, their difference as a share of the ``none`` update (the goal is no goal:
the figure docs/algorithm.md quotes), and the recompute alone (``trainer_logprobs`` timed on
its own in the same repeats). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {
    "tiny": ROOT / "manifests" / "samples" / "tiny-cpu.yaml",
    "smollm2": ROOT / "manifests" / "samples" / "smollm2-cpu.yaml",
}
#: (prompt, completion) tokens of a sequence: the means of the samples' measured runs
#: (tiny-cpu: ~22-character prompts + BOS, completions of ~6 tokens after the warm-up;
#: smollm2-cpu: the system prompt and problem ~70 tokens, completions 20.9 on average).
LENGTHS = {"tiny": (24, 8), "smollm2": (72, 21)}


def batch_of(spec: Any, vocab: int, lengths: tuple[int, int], seed: int = 0) -> Any:
    import torch

    from agpo_trainer.experience import Batch

    g = torch.Generator().manual_seed(seed)
    n = spec.training.prompts_per_step * spec.algorithm.group_size
    prompt, completion = lengths
    prompts = [torch.randint(3, vocab, (prompt,), generator=g).tolist() for _ in range(n)]
    completions = [torch.randint(3, vocab, (completion,), generator=g).tolist() for _ in range(n)]
    return Batch(
        prompt_ids=prompts,
        completion_ids=completions,
        old_logprobs=[[-5.0] * completion for _ in range(n)],
        advantages=torch.randn(n, generator=g).tolist(),
        sample_mask=[True] * n,
        example_indices=list(range(spec.training.prompts_per_step)),
    )


def bench(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch

    from agpo_api import load_job
    from agpo_api.models import RolloutCorrectionSpec
    from agpo_api.resolved import resolve
    from agpo_trainer.policy import Policy
    from agpo_trainer.runtime import Runtime
    from agpo_trainer.update import train_step, trainer_logprobs

    cache = Path(os.environ.get("AGPO_CACHE_DIR", Path.home() / ".cache" / "agpo"))
    plain = resolve(load_job(SAMPLES[name]).spec)
    tis = dataclasses.replace(
        plain,
        algorithm=dataclasses.replace(
            plain.algorithm, rollout_correction=RolloutCorrectionSpec(mode="tis")
        ),
    )
    policy = Policy.load(plain, Runtime.single(tmp / name, cache))
    vocab = policy.lm.config.vocab_size
    batch = batch_of(plain, vocab, LENGTHS[name])
    micro = policy.rt.micro_batch_size
    print(f"{name}: {sum(p.numel() for p in policy.model.parameters()) / 1e6:.2f}M "
          f"parameters, {len(batch)} sequences of {LENGTHS[name][0]} + {LENGTHS[name][1]} "
          f"tokens, {torch.get_num_threads()} torch threads", flush=True)  # fmt: skip

    def timed(fn: Any) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def step(spec: Any) -> None:
        train_step(policy, batch, spec, rank=0, world_size=1, micro=micro)

    def recompute() -> None:
        policy.model.train()
        trainer_logprobs(policy, batch, batch, tis, rank=0, world_size=1, micro=micro)

    step(plain)  # warm-up: allocator, AdamW state
    times: dict[str, list[float]] = {"none": [], "tis": [], "recompute": []}
    for r in range(args.repeats):
        order = ("none", "tis") if r % 2 == 0 else ("tis", "none")
        for side in order:
            times[side].append(timed(lambda s=side: step(plain if s == "none" else tis)))
        times["recompute"].append(timed(recompute))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"med": med, "times": times}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,smollm2", help=f"comma list of {list(SAMPLES)}")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    import transformers

    print(f"correction benchmark: {platform.machine()}, {os.cpu_count()} cpus, python "
          f"{platform.python_version()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; load average before: {os.getloadavg()}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-correction-") as tmp:
        for name in args.models.split(","):
            rows.append((name, bench(name, args, Path(tmp))))
    print(f"\n{'model':<9}{'none s':>9}{'tis s':>9}{'tis/none':>10}{'recompute s':>13}"
          f"{'recompute/none':>16}   (medians of {args.repeats}, alternating)")  # fmt: skip
    for name, r in rows:
        m = r["med"]
        print(f"{name:<9}{m['none']:>9.3f}{m['tis']:>9.3f}{m['tis'] / m['none']:>10.2f}"
              f"{m['recompute']:>13.3f}{m['recompute'] / m['none']:>15.1%}")  # fmt: skip
        for side in ("none", "tis", "recompute"):
            print(f"  {side:<10} " + " ".join(f"{t:.3f}" for t in r["times"][side]))
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
