"""Peak memory of one loss step (forward + backward) against micro-batch tokens, chunked
log-probs (the trainer's path) vs the unchunked one it replaced, for a model with Qwen's
151,936-token vocabulary and a small hidden size, so it runs on a CPU.

Usage (from the repository root)::

    python benchmarks/bench_memory.py [--tokens 256 512 1024 2048 4096 8192]
        [--chunks 256 512 1024 --chunk-at 4096] [--max-unchunked 2048] [--repeats 3]
        [--activations]

Every measurement is its own subprocess (one fresh heap each), run alternately chunked /
unchunked, repeated; the table shows medians. Peak = the process's ``VmHWM`` during the step
(reset through ``/proc/self/clear_refs`` just before it) minus its ``VmRSS`` before it: what
the step itself added (tracemalloc does not see torch's allocations, ``ru_maxrss`` cannot be
reset). The step is the trainer's: ``response_logprobs`` (+ entropy) and
``compute_policy_loss`` then ``backward``; "unchunked" is the previous code (every position's
logits, gathered and copied to float32). Sequences are 32 prompt + 96 completion tokens, so a
micro-batch of ``t`` tokens holds ``t / 128`` sequences and ``0.75 t`` response positions.

``--activations`` also measures what a Qwen2.5-1.5B-shaped decoder layer (hidden 1536, MLP
8960, 12 heads, 2 KV heads, bf16) keeps alive between forward and backward per token, with and
without gradient checkpointing (RSS after forward with 2 layers minus 1 layer; no backward), the figure
``docs/gpu-memory.md`` scales to the GPU sample. It is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "trainer"))
sys.path.insert(0, str(ROOT / "api"))

VOCAB = 151_936
PROMPT, COMPLETION = 32, 96
MIB = 1024 * 1024


# --------------------------------------------------------------------------- in the child
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """VmHWM := VmRSS (Linux >= 4.0: writing 5 to clear_refs resets the peak RSS)."""
    Path("/proc/self/clear_refs").write_text("5")


def small_vocab_model(hidden: int, layers: int) -> object:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=256, tie_word_embeddings=False,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).float().train()


def loss_step(lm: object, rows: int, mode: str, chunk: int) -> None:
    """One micro-batch's loss, forward and backward, as the update computes it."""
    import torch

    from agpo_trainer.algorithms import compute_policy_loss, entropy_from_logits, token_logprobs
    from agpo_trainer.models.response import ResponseModel
    from agpo_trainer.policy import Responses, response_logprobs

    g = torch.Generator().manual_seed(rows)
    prompts = torch.randint(0, VOCAB, (rows, PROMPT), generator=g).tolist()
    completions = torch.randint(0, VOCAB, (rows, COMPLETION), generator=g).tolist()
    x = Responses.build(prompts, completions, 0, torch.device("cpu"))
    if mode == "chunked":
        logp, entropy = response_logprobs(
            ResponseModel(lm), x, 1.0, chunk_tokens=chunk, with_entropy=True
        )
    else:  # the previous path: [B, L, V] logits, gathered, float32, tempered
        logits = lm(input_ids=x.input_ids, attention_mask=x.attention_mask).logits
        logits = torch.gather(logits, 1, x.positions.unsqueeze(-1).expand(-1, -1, VOCAB))
        logits = logits.float() / 1.0
        logp, entropy = token_logprobs(logits, x.tokens), entropy_from_logits(logits.detach())
    loss, _ = compute_policy_loss(
        logp, logp.detach(), torch.randn(rows, generator=g), x.mask, entropy=entropy
    )
    loss.backward()


def child_loss(args: argparse.Namespace) -> dict[str, float]:
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    lm = small_vocab_model(args.hidden, args.layers)
    loss_step(lm, 1, args.mode, args.chunk)  # warm-up: kernels, allocator
    lm.zero_grad(set_to_none=False)  # gradients exist before and after: not the step's
    before = _status_kib("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    loss_step(lm, args.child_tokens // (PROMPT + COMPLETION), args.mode, args.chunk)
    seconds = time.perf_counter() - start
    return {"peak_mib": (_status_kib("VmHWM") - before) / 1024, "seconds": seconds}


def child_activations(args: argparse.Namespace) -> dict[str, float]:
    """RSS kept alive after forward (the graph) by a Qwen2.5-1.5B-shaped decoder, bf16."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=1024, hidden_size=1536, intermediate_size=8960, num_hidden_layers=args.layers,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096,
        attn_implementation="sdpa",
    )  # fmt: skip
    lm = Qwen2ForCausalLM(config).to(torch.bfloat16).train()
    if args.checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, 1024, (1, args.child_tokens))
    before = _status_kib("VmRSS")
    # no attention mask (one unpadded row): SDPA's causal flash kernel, as on a GPU
    hidden = lm.model(input_ids=ids, use_cache=False).last_hidden_state
    kept = (_status_kib("VmRSS") - before) / 1024
    assert hidden.requires_grad  # the graph (what backward needs) is alive here
    return {"kept_mib": kept}


# --------------------------------------------------------------------------- the parent
def run_child(extra: list[str]) -> dict[str, float]:
    # A fixed mmap threshold: glibc's default one grows after large frees and then keeps
    # freed tensors in its heap, which RSS would count as if they were still alive.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, __file__, *extra], capture_output=True, text=True, check=True, env=env
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def versions() -> str:
    import torch
    import transformers

    return (
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = _meminfo_gib()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, load {load}"


def _meminfo_gib() -> float:
    first = Path("/proc/meminfo").read_text().splitlines()[0]
    return int(first.split()[1]) / 1024 / 1024


def loss_table(args: argparse.Namespace) -> None:
    common = ["--hidden", str(args.hidden), "--layers", str(args.layers)]
    common += ["--threads", str(args.threads)]
    results: dict[tuple[str, int, int], list[dict[str, float]]] = {}
    cases = [("chunked", t, args.chunk) for t in args.tokens]
    cases += [("unchunked", t, 0) for t in args.tokens if t <= args.max_unchunked]
    cases += [("chunked", args.chunk_at, c) for c in args.chunks if c != args.chunk]
    # alternate: one repeat of every case, then the next (chunked / unchunked interleaved)
    order = sorted(cases, key=lambda c: (c[1], c[0]))
    for _ in range(args.repeats):
        for mode, tokens, chunk in order:
            extra = ["--child", "loss", "--mode", mode, "--child-tokens", str(tokens)]
            extra += ["--chunk", str(chunk or args.chunk), *common]
            results.setdefault((mode, tokens, chunk), []).append(run_child(extra))

    def med(key: tuple[str, int, int], field: str) -> float:
        return statistics.median(r[field] for r in results[key])

    print(f"\nloss step, vocab {VOCAB}, hidden {args.hidden}, {args.layers} layers, float32 "
          f"(medians of {args.repeats}; peak = what the step added to RSS)")  # fmt: skip
    print(f"{'tokens':>7} {'resp.pos':>8} {'N x V fp32 MiB':>14} | {'chunked MiB':>11} "
          f"{'s':>6} | {'unchunked MiB':>13} {'s':>6} | {'unchunked/chunked':>17}")  # fmt: skip
    for t in args.tokens:
        n = t // (PROMPT + COMPLETION) * COMPLETION
        c = med(("chunked", t, args.chunk), "peak_mib")
        cs = med(("chunked", t, args.chunk), "seconds")
        row = f"{t:>7} {n:>8} {n * VOCAB * 4 / MIB:>14.0f} | {c:>11.0f} {cs:>6.2f} | "
        if ("unchunked", t, 0) in results:
            u = med(("unchunked", t, 0), "peak_mib")
            us = med(("unchunked", t, 0), "seconds")
            row += f"{u:>13.0f} {us:>6.2f} | {u / c:>17.2f}"
        else:
            row += f"{'(skipped)':>13} {'':>6} | {'':>17}"
        print(row)
    print(f"(chunk = {args.chunk} positions; unchunked above {args.max_unchunked} tokens is "
          f"skipped: it would need several GiB)")  # fmt: skip
    print(f"\nchunked at {args.chunk_at} tokens, by chunk size")
    print(f"{'chunk':>7} {'chunk x V fp32 MiB':>18} | {'peak MiB':>9} {'s':>6}")
    for c in sorted({*args.chunks, args.chunk}):
        key = ("chunked", args.chunk_at, c)
        if key not in results:  # chunk == --chunk and --chunk-at not among --tokens
            continue
        print(f"{c:>7} {c * VOCAB * 4 / MIB:>18.0f} | {med(key, 'peak_mib'):>9.0f} "
              f"{med(key, 'seconds'):>6.2f}")  # fmt: skip


def activation_table(args: argparse.Namespace) -> None:
    tokens = args.activation_tokens
    kept: dict[tuple[int, bool], list[float]] = {}
    for _ in range(args.repeats):
        for ckpt in (False, True):
            for layers in (1, 2):
                extra = ["--child", "activations", "--layers", str(layers)]
                extra += ["--child-tokens", str(tokens)] + (["--checkpointing"] if ckpt else [])
                kept.setdefault((layers, ckpt), []).append(run_child(extra)["kept_mib"])
    print(f"\nQwen2.5-1.5B-shaped decoder layer, bf16, {tokens} tokens: memory kept from "
          f"forward to backward (medians of {args.repeats})")  # fmt: skip
    print(f"{'checkpointing':>13} | {'1 layer MiB':>11} {'2 layers MiB':>12} | "
          f"{'per layer MiB':>13} {'per token per layer KiB':>23}")  # fmt: skip
    for ckpt in (False, True):
        one = statistics.median(kept[(1, ckpt)])
        two = statistics.median(kept[(2, ckpt)])
        per = two - one
        print(f"{ckpt!s:>13} | {one:>11.1f} {two:>12.1f} | {per:>13.1f} "
              f"{per * 1024 / tokens:>23.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--chunk", type=int, default=1024, help="logprobChunkTokens")
    parser.add_argument("--chunks", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--chunk-at", type=int, default=4096, help="tokens for the chunk sweep")
    parser.add_argument("--max-unchunked", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--activations", action="store_true")
    parser.add_argument("--activation-tokens", type=int, default=1024)
    # child-only
    parser.add_argument("--child", choices=["loss", "activations"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="chunked", help=argparse.SUPPRESS)
    parser.add_argument("--child-tokens", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "loss":
        print(json.dumps(child_loss(args)))
        return
    if args.child == "activations":
        print(json.dumps(child_activations(args)))
        return
    print(f"bench_memory: {' '.join(sys.argv[1:]) or '(defaults)'}")
    print(f"machine: {machine()}")
    print(f"versions: {versions()}")
    loss_table(args)
    if args.activations:
        activation_table(args)
    print(f"\nload after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
