"""Benchmark of the algorithm core: advantages + length reward + policy loss (fwd + bwd).

Usage (from the repository root)::

    PYTHONPATH=trainer python benchmarks/bench_algorithms.py \
        [--completions 8192 --tokens 1024 --group-size 8] [--dtype bfloat16] [--device cuda] \
        [--vocab 32768 --logits-completions 16]

Log-probs are a leaf tensor that requires grad (no model, no vocabulary logits) so the numbers
are the cost of the RL math alone. ``--vocab V`` additionally times ``token_logprobs`` and
``entropy_from_logits`` on ``[logits-completions, tokens, V]`` logits. Peak memory is the
``ru_maxrss`` growth of the process (CPU; tracemalloc does not see torch allocations) or
``torch.cuda.max_memory_allocated`` (CUDA). It is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

from agpo_trainer.algorithms import (
    AdvantageOptions,
    compute_advantages_and_mask,
    compute_policy_loss,
    entropy_from_logits,
    token_logprobs,
)
from agpo_trainer.rewards import agpo_length_reward

R = TypeVar("R")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def max_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], R], device: torch.device, repeats: int) -> tuple[float, R]:
    """Best wall time of ``repeats`` runs (after one warm-up), seconds, and the last result."""
    result = fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--completions", type=int, default=8192, help="N completions")
    parser.add_argument("--tokens", type=int, default=1024, help="T response tokens each")
    parser.add_argument("--group-size", type=int, default=8, help="G completions per prompt")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--aggregation", default="token-mean")
    parser.add_argument("--zero-variance", default="agpo")
    parser.add_argument("--kl-coef", type=float, default=0.0, help="> 0 adds a k3 KL term")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--vocab", type=int, default=0, help="also time the logits path")
    parser.add_argument("--logits-completions", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    n, t, g = args.completions, args.tokens, args.group_size
    gen = torch.Generator(device=device).manual_seed(args.seed)

    rss_start = max_rss_mib()
    # Inputs shaped like a rollout batch: ~35% correct, lengths up to T, right padding.
    correct = torch.rand(n, generator=gen, device=device) < 0.35
    lengths = torch.randint(1, t + 1, (n,), generator=gen, device=device)
    accuracy = correct.float()
    response_mask = torch.arange(t, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    old = -torch.rand(n, t, generator=gen, device=device) * 2
    logprobs = (old + 0.05 * torch.randn(n, t, generator=gen, device=device)).to(dtype)
    old = old.to(dtype)
    ref = old if args.kl_coef > 0 else None
    logprobs.requires_grad_()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_inputs = max_rss_mib()

    def advantages_step() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bonus = agpo_length_reward(lengths, correct, g, 0.1)
        rewards = accuracy + bonus
        adv, keep = compute_advantages_and_mask(
            rewards, g, advantage="grpo", zero_variance=args.zero_variance,
            options=AdvantageOptions(reward_range=(0.0, 1.0)),  # accuracy; mixed-scope bonus
        )  # fmt: skip
        return rewards, adv, keep

    t_adv, (_, adv, keep) = timed(advantages_step, device, args.repeats)

    def loss_forward() -> torch.Tensor:
        loss, _ = compute_policy_loss(
            logprobs,
            old,
            adv,
            response_mask,
            ref_logprobs=ref,
            kl_coef=args.kl_coef,
            aggregation=args.aggregation,
            sample_mask=keep,
            max_tokens=t,
        )
        return loss

    t_fwd, _ = timed(loss_forward, device, args.repeats)

    def loss_forward_backward() -> None:
        logprobs.grad = None
        torch.autograd.backward(loss_forward())

    t_fwd_bwd, _ = timed(loss_forward_backward, device, args.repeats)
    rss_peak = max_rss_mib()

    total = t_adv + t_fwd_bwd
    tokens = n * t
    print(
        f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} torch={torch.__version__}"
    )
    print(
        f"batch: {n} completions x {t} tokens (G={g}) = {tokens:,} token positions, "
        f"{int(response_mask.sum()):,} response tokens"
    )
    print(f"advantages + length reward : {t_adv * 1e3:9.2f} ms")
    print(f"loss forward                : {t_fwd * 1e3:9.2f} ms")
    print(f"loss forward + backward     : {t_fwd_bwd * 1e3:9.2f} ms")
    print(
        f"total (adv + fwd + bwd)     : {total * 1e3:9.2f} ms "
        f"-> {tokens / total / 1e6:.1f} M tokens/s"
    )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        print(f"peak CUDA memory allocated  : {peak:9.1f} MiB")
    else:
        print(
            f"peak RSS growth             : {rss_peak - rss_start:9.1f} MiB "
            f"(inputs {rss_inputs - rss_start:.1f} MiB, math {rss_peak - rss_inputs:.1f} MiB)"
        )

    if args.vocab > 0:
        b = min(args.logits_completions, n)
        logits = torch.randn(b, t, args.vocab, generator=gen, device=device).to(dtype)
        logits.requires_grad_()
        ids = torch.randint(0, args.vocab, (b, t), generator=gen, device=device)

        def logits_path() -> None:
            logits.grad = None
            torch.autograd.backward(token_logprobs(logits, ids).sum())

        t_lp, _ = timed(logits_path, device, args.repeats)
        t_ent, _ = timed(lambda: entropy_from_logits(logits.detach()), device, args.repeats)
        print(
            f"token_logprobs fwd+bwd [{b}x{t}x{args.vocab}]: {t_lp * 1e3:9.2f} ms "
            f"-> {b * t / t_lp / 1e3:.1f} k tokens/s"
        )
        print(f"entropy_from_logits    [{b}x{t}x{args.vocab}]: {t_ent * 1e3:9.2f} ms")
        if device.type != "cuda":
            print(f"peak RSS growth (incl. logits): {max_rss_mib() - rss_start:9.1f} MiB")


if __name__ == "__main__":
    main()
