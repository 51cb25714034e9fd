"""The prepared GPU check (issue #18): the trainer's own update step on one GPU with a
Qwen2.5-1.5B-shaped model of random weights, at ``manifests/samples/qwen-math-gpu.yaml``'s
settings; it prints the peak GPU memory against ``docs/gpu-memory.md``'s estimate, the step
time and the update's tokens/s. Torch and transformers only (no vLLM, no download, no server).

Usage (from the repository root, with the trainer's dependencies installed)::

    python benchmarks/gpu_check.py                       # on a CUDA GPU, ~1-3 min on an H100
    python benchmarks/gpu_check.py --device cpu --tiny   # smoke test of the same path on CPU

    [--steps 3] [--budget-s 420] [--no-fsdp] [--sample manifests/samples/qwen-math-gpu.yaml]

What runs is what ``train()`` runs on a rank: the sample is read and validated through the API
(``agpo_api.parse_job``), resolved (``agpo_api.resolved.resolve``), and a real
``agpo_trainer.policy.Policy`` is stepped by ``agpo_trainer.update.train_step`` (FSDP2 with
``MixedPrecisionPolicy(bf16, float32)`` over float32 masters, chunked log-probs, token-budget
micro-batches, gradient checkpointing, AdamW). Two things differ from the sample, on purpose:

* **One rank's batch.** The sample trains 128 prompts x 8 on 16 ranks (2 nodes x 8); one rank
  holds 64 sequences, so the job here has ``promptsPerStep`` 128 / 16 = 8 and one node with one
  process and one GPU. The batch is synthetic: every sequence full-length (512 prompt + 3584
  completion tokens, the worst case the doc's table assumes), random token ids, old log-probs
  ``-ln(vocabulary)`` (about what random weights give), group-normalised random advantages.
* **FSDP2 on one rank.** ``Policy.sharded`` is ``strategy == "fsdp" and world_size > 1``: in
  one process the Policy does not wrap with FSDP2 (it trains the float32 model under autocast).
  To measure the path the sample's ranks take, :class:`OneRankFSDPPolicy` says "sharded" on a
  one-process gloo/NCCL group, everything else is the Policy's own. ``--no-fsdp`` runs the
  unmodified Policy instead (what a one-GPU job would run). With one rank nothing is sharded:
  the float32 parameters, gradients and AdamW moments are all on the GPU (16 B a parameter,
  23 GiB), where each of the sample's 16 ranks holds 1/16 of them; the script prints the doc's
  per-GPU estimate and the same estimate at one rank, which is what it compares with.

Exit codes: 0 done; 2 no CUDA device (one line) or bad arguments; 3 out of GPU memory (one
line with the figures). A benchmark, not a test: ``tests/test_gpu_check_cpu.py`` runs the tiny
CPU mode and the refusal.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "trainer"))
sys.path.insert(0, str(ROOT / "api"))

SAMPLE = ROOT / "manifests" / "samples" / "qwen-math-gpu.yaml"
DOC = ROOT / "docs" / "gpu-memory.md"
GIB = 2**30
TAG = "gpu_check:"

# Qwen2.5-1.5B / Qwen2.5-Math-1.5B's shape (docs/gpu-memory.md, "The setting"): 1,543,714,304
# parameters with the tied embedding. Random weights: the memory and the time of a step do not
# depend on them.
QWEN25_1_5B: dict[str, Any] = {
    "hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
    "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151_936,
    "tie_word_embeddings": True, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
}  # fmt: skip
QWEN25_PAD_ID = 151_643  # <|endoftext|>, Qwen2.5's pad token
# --tiny: the same structure (GQA, tied embeddings, 4 micro-batches of 8 full-length sequences
# per optimizer step, several log-prob chunks per micro-batch) at a size a CPU steps in seconds.
TINY: dict[str, Any] = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 256, "vocab_size": 2048,
    "tie_word_embeddings": True, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
}  # fmt: skip
TINY_SETTINGS = {
    "maxPromptTokens": 32, "maxCompletionTokens": 96,  # training.*
    "microBatchTokens": 8 * 128, "logprobChunkTokens": 256,  # trainer.*
}  # fmt: skip


def say(text: str) -> None:
    print(f"{TAG} {text}", flush=True)


# --------------------------------------------------------------------------- the job
def build_job(sample: Path, tiny: bool) -> tuple[Any, dict[str, Any]]:
    """The sample as one rank's job, validated and resolved by the API; and the sample's own
    figures (ranks, prompts) for the printout."""
    import yaml

    from agpo_api import parse_job
    from agpo_api.resolved import resolve

    doc = yaml.safe_load(sample.read_text())
    original = copy.deepcopy(doc["spec"])
    training, trainer = doc["spec"]["training"], doc["spec"]["trainer"]
    ranks = int(trainer.get("nodes", 1)) * int(trainer.get("procsPerNode", 1))
    prompts = int(training["promptsPerStep"])
    if prompts % ranks:
        raise SystemExit(f"{TAG} {sample}: promptsPerStep {prompts} is not split by {ranks} ranks")
    training["promptsPerStep"] = prompts // ranks  # one rank's share of the step
    trainer.update(nodes=1, procsPerNode=1, gpusPerNode=1)
    limits = trainer.get("resources", {}).get("limits", {})
    if "nvidia.com/gpu" in limits:
        limits["nvidia.com/gpu"] = "1"
    if tiny:
        training["maxPromptTokens"] = TINY_SETTINGS["maxPromptTokens"]
        training["maxCompletionTokens"] = TINY_SETTINGS["maxCompletionTokens"]
        trainer["microBatchTokens"] = TINY_SETTINGS["microBatchTokens"]
        trainer["logprobChunkTokens"] = TINY_SETTINGS["logprobChunkTokens"]
    job = parse_job(doc, source=str(sample))
    return resolve(job.spec), {"ranks": ranks, "prompts": prompts, "spec": original}


def synthetic_batch(spec: Any, vocab: int, seed: int = 0) -> Any:
    """One rank's batch: ``promptsPerStep x groupSize`` full-length sequences."""
    import torch

    from agpo_trainer.experience import Batch

    t, g_size = spec.training, spec.algorithm.group_size
    g = torch.Generator().manual_seed(seed)
    prompt_ids: list[list[int]] = []
    completion_ids: list[list[int]] = []
    advantages: list[float] = []
    for _ in range(t.prompts_per_step):
        prompt = torch.randint(0, vocab, (t.max_prompt_tokens,), generator=g).tolist()
        rewards = torch.randn(g_size, generator=g)
        adv = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
        for a in adv.tolist():
            prompt_ids.append(prompt)
            completion_ids.append(
                torch.randint(0, vocab, (t.max_completion_tokens,), generator=g).tolist()
            )
            advantages.append(a)
    old = -math.log(vocab)  # about what random weights give each token
    return Batch(
        prompt_ids=prompt_ids,
        completion_ids=completion_ids,
        old_logprobs=[[old] * len(c) for c in completion_ids],
        advantages=advantages,
        sample_mask=[True] * len(completion_ids),
        example_indices=list(range(t.prompts_per_step)),
    )


# --------------------------------------------------------------------------- the policy
def one_rank_fsdp_policy() -> type:
    from agpo_trainer.policy import Policy

    class OneRankFSDPPolicy(Policy):
        """The Policy, FSDP2-wrapped on a one-process group (``Policy.sharded`` asks for more
        than one rank); the wrap, optimizer and schedule are the Policy's own."""

        @property
        def sharded(self) -> bool:
            return self.spec.trainer.strategy == "fsdp"

    return OneRankFSDPPolicy


def build_policy(spec: Any, shape: dict[str, Any], device: Any, fsdp: bool, pad_id: int) -> Any:
    import tempfile

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from agpo_trainer.policy import MASTER_DTYPE, Policy
    from agpo_trainer.runtime import Runtime

    torch.manual_seed(0)
    config = Qwen2Config(**shape)
    with torch.device(device):
        lm = Qwen2ForCausalLM(config).to(MASTER_DTYPE)  # float32 masters, as Policy.load
    work = Path(tempfile.gettempdir()) / "agpo-gpu-check"
    rt = Runtime.single(work, work / "cache")
    tokenizer = type("Tokenizer", (), {"pad_token_id": pad_id})()  # all the update reads
    cls = one_rank_fsdp_policy() if fsdp else Policy
    return cls(spec, rt, model_dir="", tokenizer=tokenizer, model=lm, device=device)


def init_group(device: Any) -> str:
    """A one-process group, as torchrun would give one rank (FSDP2 needs a process group)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return str(dist.get_backend())


# --------------------------------------------------------------------------- the estimate
def doc_estimate(ranks: int) -> tuple[float, float, float] | None:
    """``docs/gpu-memory.md``'s per-GPU peak at ``ranks`` ranks (its "peak, estimated" row),
    the persistent float32 state it counts (parameters, gradients, AdamW moments, sharded),
    and the same peak at one rank, where that state is whole: ``peak - p + p x ranks``."""
    row = re.search(
        r"^\| \*\*peak, estimated\*\* \|.*?persistent ([\d.]+).*?\| \*\*~([\d.]+)\*\* \|",
        DOC.read_text(),
        re.MULTILINE,
    )
    if row is None:
        return None
    persistent, peak = float(row.group(1)), float(row.group(2))
    return peak, persistent, peak - persistent + persistent * ranks


# --------------------------------------------------------------------------- the run
def versions(device: Any) -> str:
    import torch
    import transformers

    parts = [f"torch {torch.__version__}", f"CUDA {torch.version.cuda or 'none'}"]
    if device.type == "cuda":
        parts.append(f"cuDNN {torch.backends.cudnn.version()}")
        nccl = torch.cuda.nccl.version()  # a tuple in recent torch, an int before
        parts.append(f"NCCL {'.'.join(map(str, nccl)) if isinstance(nccl, tuple) else nccl}")
    parts += [f"transformers {transformers.__version__}", f"Python {platform.python_version()}"]
    return ", ".join(parts)


def device_line(device: Any) -> str:
    import torch

    if device.type != "cuda":
        return f"device cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    p = torch.cuda.get_device_properties(device)
    return (
        f"device {p.name} (sm_{p.major}{p.minor}, {p.total_memory / GIB:.1f} GiB, "
        f"{p.multi_processor_count} SMs)"
    )


def peak_line(device: Any, what: str) -> str:
    import torch

    if device.type == "cuda":
        alloc = torch.cuda.max_memory_allocated(device) / GIB
        reserved = torch.cuda.max_memory_reserved(device) / GIB
        return f"peak GPU memory {what}: allocated {alloc:.2f} GiB, reserved {reserved:.2f} GiB"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    return f"peak memory {what}: process max RSS {rss:.2f} GiB (cpu: no GPU figures)"


def run(args: argparse.Namespace) -> int:
    import torch

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print(
                f"{TAG} no CUDA device here (torch {torch.__version__}, CUDA "
                f"{torch.version.cuda or 'not built'}): run it on a GPU machine, or "
                f"--device cpu --tiny for a smoke test",
                file=sys.stderr,
            )
            return 2
        device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    start = time.perf_counter()
    spec, sample = build_job(args.sample, args.tiny)
    shape = TINY if args.tiny else QWEN25_1_5B
    t, tr = spec.training, spec.trainer
    say(device_line(device))
    say(versions(device))
    backend = init_group(device) if not args.no_fsdp else "none"
    estimate = doc_estimate(sample["ranks"])
    if estimate is None:
        say(f"estimate: no 'peak, estimated' row found in {DOC.relative_to(ROOT)}")
    else:
        peak, persistent, one_rank = estimate
        say(
            f"estimate ({DOC.relative_to(ROOT)}, 'peak, estimated'): ~{peak} GiB per GPU at "
            f"{sample['ranks']} ranks (persistent float32 state {persistent} GiB, sharded); "
            f"at 1 rank (that state whole) ~{one_rank:.1f} GiB allocated, plus 1-3 GiB CUDA "
            f"context and fragmentation"
            + ("; this tiny shape is not comparable" if args.tiny else "")
        )
        if device.type == "cuda" and not args.tiny:
            total = torch.cuda.get_device_properties(device).total_memory / GIB
            if total < one_rank + 2:
                say(f"warning: {total:.1f} GiB on this GPU < ~{one_rank + 2:.0f} GiB: expect OOM")

    pad_id = 0 if args.tiny else QWEN25_PAD_ID
    policy = build_policy(spec, shape, device, fsdp=not args.no_fsdp, pad_id=pad_id)
    params = sum(p.numel() for p in policy.model.parameters())
    from torch.distributed.fsdp import FSDPModule

    if isinstance(policy.model, FSDPModule):
        wrap = f"FSDP2 on 1 rank ({backend} group of 1)"
    else:
        wrap = f"no FSDP ({type(policy.model).__name__} under autocast)"
    say(
        f"model {'tiny' if args.tiny else 'Qwen2.5-1.5B'}-shaped, random weights: {params:,} "
        f"parameters, {next(policy.model.parameters()).dtype} masters, model.dtype "
        f"{spec.model.dtype} compute, {wrap}, attention "
        f"{getattr(policy.lm.config, '_attn_implementation', '?')}"
    )
    from agpo_trainer.update import micro_batch_cut, train_step

    batch = synthetic_batch(spec, shape["vocab_size"])
    per_mini = len(batch) // t.mini_batches
    cut = micro_batch_cut(
        batch, range(per_mini), spec, rank=0, world_size=1, micro=policy.rt.micro_batch_size
    )
    seq = t.max_prompt_tokens + t.max_completion_tokens
    g_size = spec.algorithm.group_size
    say(
        f"batch {t.prompts_per_step} prompts x {g_size} = {len(batch)} sequences of "
        f"{t.max_prompt_tokens} + {t.max_completion_tokens} tokens (one rank's share of "
        f"{sample['prompts']} x {g_size} over {sample['ranks']} ranks); miniBatches "
        f"{t.mini_batches}, epochs {t.epochs}: {len(cut)} micro-batches of <= "
        f"{tr.micro_batch_tokens} tokens per optimizer step; logprobChunkTokens "
        f"{tr.logprob_chunk_tokens}, gradientCheckpointing {str(tr.gradient_checkpointing).lower()}"
    )
    tokens = len(batch) * seq * t.epochs
    response = len(batch) * t.max_completion_tokens * t.epochs

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: list[float] = []
    for step in range(args.steps):
        if step >= 2 and time.perf_counter() - start + times[-1] > args.budget_s:
            say(f"stopping after {step} steps: another would pass --budget-s {args.budget_s:.0f}")
            break
        sync()
        t0 = time.perf_counter()
        try:
            stats = train_step(
                policy, batch, spec, rank=0, world_size=1, micro=policy.rt.micro_batch_size
            )
            sync()
        except torch.OutOfMemoryError:
            total = torch.cuda.get_device_properties(device).total_memory / GIB
            print(
                f"{TAG} out of memory in step {step + 1}: {peak_line(device, 'so far')} of "
                f"{total:.1f} GiB",
                file=sys.stderr,
            )
            return 3
        dt = time.perf_counter() - t0
        kind = "warm-up, not timed" if step == 0 else "timed"
        say(
            f"step {step + 1} ({kind}): {dt:.2f} s, loss {stats.loss:.4f}, grad norm "
            f"{stats.grad_norm:.3f}, ratio mean {stats.ratio_mean:.4f}, lr {stats.learning_rate:.1e}"
        )
        if step == 0:
            say(peak_line(device, "in step 1 (model, first AdamW step)"))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
        else:
            times.append(dt)
    if not times:
        say("no timed step (--steps must be >= 2)")
        return 0
    step_s = statistics.median(times)
    say(f"step time {step_s:.2f} s (median of {len(times)} timed steps)")
    say(
        f"update tokens/s {tokens / step_s:,.0f} (one rank; {tokens:,} tokens a step, prompt + "
        f"completion; {response / step_s:,.0f} completion tokens/s)"
    )
    say(peak_line(device, "in the timed steps"))
    if estimate is not None and device.type == "cuda" and not args.tiny:
        alloc = torch.cuda.max_memory_allocated(device) / GIB
        say(
            f"measured / estimate at 1 rank: {alloc:.2f} / {estimate[2]:.1f} GiB = {alloc / estimate[2]:.2f}"
        )
    say(f"total {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a small model shape and short sequences")
    ap.add_argument("--steps", type=int, default=3, help="train steps; the first is warm-up")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="start no step that would end after this many seconds")  # fmt: skip
    ap.add_argument("--no-fsdp", action="store_true",
                    help="the unmodified Policy at world size 1 (autocast, no FSDP2)")  # fmt: skip
    ap.add_argument("--sample", type=Path, default=SAMPLE)
    args = ap.parse_args(argv)
    if args.device == "cpu" and not args.tiny:
        ap.error(
            "--device cpu needs --tiny (the 1.5B shape at 64 x 4096 tokens takes hours on a CPU)"
        )
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
