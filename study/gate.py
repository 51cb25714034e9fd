"""Learnability gate for the builtin bit-counting task (run before any study code).

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python study/gate.py --variant tiny-mix

1. builds a byte-level Qwen2 (a variant's size), 2. runs the supervised warm-up on the
``warmup`` split only (mixed formats, stopped early on a held-out slice of the warm-up split),
cached in ``~/.cache/agpo/gate/`` by a hash of its config, 3. measures the gate figures on
the ``eval`` split with in-process sampling (T=1, G=8), 4. runs a short plain-GRPO run on
the ``train`` split through the product's own loop (``agpo_trainer.train.train`` with the
in-process rollout backend) and reports greedy eval accuracy before/after, 5. prints the gate
table with PASS/FAIL per criterion (the thresholds below were fixed before any figure was
seen) and appends a record to ``study/gate_log.jsonl``.

Never run by pytest: it is a command (minutes of CPU).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from agpo_api.models import AGPOJob
from agpo_trainer.algorithms import token_logprobs
from agpo_trainer.models.tiny import TinyModelSpec, build_config, build_tokenizer
from agpo_trainer.rollout.inprocess import InProcessBackend, keeping, sample_rows
from agpo_trainer.runtime import Runtime
from agpo_trainer.stats import StepStats
from agpo_trainer.tasks import bitcount as task
from agpo_trainer.train import Callbacks, train

# ------------------------------------------------------------------ decision rules (fixed)
ACC_RANGE = (0.30, 0.65)  # mean sampled accuracy on eval (T=1, G=8)
SPREAD_MIN = 0.20  # accuracy(2-6 bits) - accuracy(11-14 bits)
ZERO_VAR_RANGE = (0.20, 0.60)  # fraction of groups with zero reward variance
ALL_CORRECT_MIN = 0.05  # fraction of groups all correct
ALL_WRONG_MIN = 0.05  # fraction of groups all wrong
SCRATCH_RANGE = (0.35, 0.65)  # fraction of completions with scratch work
LENGTH_CV_MIN = 0.30  # coefficient of variation of completion tokens of correct answers
GRPO_GAIN_MIN = 0.05  # greedy eval accuracy after - before the short GRPO run

GROUP = 8
TEMPERATURE = 1.0
EVAL_PER_DIFFICULTY = 40  # gate sampling set: up to 40 eval problems per bit count
GREEDY_PER_DIFFICULTY = 100  # greedy before/after set
MAX_NEW_TOKENS = 64  # longest grammatical completion is 6 + 34 + 1 + 9 + EOS = 51
CACHE_VERSION = 2  # bump when the warm-up code changes meaning
LOG = Path(__file__).with_name("gate_log.jsonl")


@dataclass(frozen=True)
class Variant:
    """A task/warm-up/model variant; ``warmup_*`` fields define the cached warm model."""

    hidden: int = 128
    intermediate: int = 256
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    init_range: float = 0.02
    warmup_lr: float = 1e-3
    warmup_batch: int = 64
    warmup_max_steps: int = 3000
    warmup_check_every: int = 25
    warmup_target_acc: float = 0.45  # stop once warm-up-val sampled accuracy reaches this
    scratch_prob: float = 0.5  # warm-up completions with scratch
    # warm-up draws a bit count n with weight decay ** max(0, n - decay_from) (1.0: uniform), up to
    # warmup_max_bits: long strings seen rarely (or never) stay hard
    warmup_decay: float = 1.0
    warmup_decay_from: int = 8
    warmup_max_bits: int = task.MAX_BITS
    filler_max: int = task.MAX_FILLER  # warm-up filler uniform in 0..filler_max
    grpo_steps: int = 40
    grpo_prompts: int = 16
    grpo_lr: float = 1e-4
    extra: dict[str, Any] = field(default_factory=dict)

    def warm_key(self, seed: int) -> str:
        d = asdict(self)
        for k in ("grpo_steps", "grpo_prompts", "grpo_lr", "extra"):
            d.pop(k)
        d.update(seed=seed, version=CACHE_VERSION)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


VARIANTS: dict[str, Variant] = {
    # 0.36M: the builtin:tiny shape (hidden 128, 2 layers, head_dim 64)
    "tiny-mix": Variant(),
    # 4 layers, hidden 128: more depth for lookup + add
    # long strings rarely seen in the warm-up (weight 0.6 ** (n - 8) above 8 bits)
    "tiny-skew": Variant(warmup_decay=0.6),
    # the warm-up never sees more than 10 bits: 11-14 are extrapolation
    "tiny-cap10": Variant(warmup_max_bits=10),
    # uniform, trained further (warm-up-val accuracy 0.7): does confidence give zero variance?
    "tiny-mix-long": Variant(warmup_target_acc=0.7),
    # short strings learned well, long ones rarely seen (weight 0.5 ** (n - 6) above 6 bits)
    "tiny-skew6": Variant(warmup_decay=0.5, warmup_decay_from=6, warmup_target_acc=0.55),
    # tiny-skew6's warm-up on a 4-layer model (head_dim 32): can scratch become useful?
    "small-skew6": Variant(
        layers=4,
        intermediate=512,
        heads=4,
        kv_heads=2,
        warmup_decay=0.5,
        warmup_decay_from=6,
        warmup_target_acc=0.55,
    ),
    # the same on hidden 256 / 4 layers (3.28M)
    "medium-skew6": Variant(
        hidden=256,
        intermediate=768,
        layers=4,
        heads=4,
        kv_heads=2,
        warmup_decay=0.5,
        warmup_decay_from=6,
        warmup_target_acc=0.55,
    ),
    "small-mix": Variant(layers=4, intermediate=512, heads=4, kv_heads=2),
    # hidden 256, 4 layers, head_dim 64 (3.28M)
    "medium-mix": Variant(hidden=256, intermediate=768, layers=4, heads=4, kv_heads=2),
}


# ------------------------------------------------------------------ model and sampling
def build_model(v: Variant, seed: int) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    spec = TinyModelSpec(
        hidden_size=v.hidden,
        intermediate_size=v.intermediate,
        num_layers=v.layers,
        num_heads=v.heads,
        num_kv_heads=v.kv_heads,
        initializer_range=v.init_range,
    )
    tok = build_tokenizer()
    config = build_config(spec, vocab_size=len(tok))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tok


def encode(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


@dataclass
class Sample:
    prompt: str
    ids: list[int]  # completion token ids (EOS included when finished)
    text: str
    finished: bool


def generate(
    model: Any, tok: Any, prompts: list[str], n: int, *, greedy: bool, gen: torch.Generator
) -> list[Sample]:
    """``n`` completions per prompt (contiguous groups) of BOS + prompt, T=1 or greedy
    (:func:`agpo_trainer.rollout.inprocess.sample_rows`: KV-cached, batched by prompt
    length)."""
    eos = tok.eos_token_id
    ids = [[tok.bos_token_id, *encode(tok, p)] for p in prompts]
    rows = sample_rows(
        model,
        ids,
        n,
        eos=eos,
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=0.0 if greedy else TEMPERATURE,
        gen=gen,
    )
    return [
        Sample(prompts[k // n], s, tok.decode([t for t in s if t != eos]), finished)
        for k, (s, _, finished) in enumerate(rows)
    ]


def seq_logprobs(model: Any, tok: Any, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of each completion under ``model`` (with grad), and the mask."""
    seqs = [[tok.bos_token_id, *encode(tok, s.prompt), *s.ids] for s in samples]
    plen = [len(q) - len(s.ids) for q, s in zip(seqs, samples, strict=True)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, q in enumerate(seqs):
        ids[r, : len(q)] = torch.tensor(q)
        attn[r, : len(q)] = 1
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    lp = token_logprobs(logits, ids[:, 1:])
    mask = torch.zeros_like(lp, dtype=torch.bool)
    for r, (p, q) in enumerate(zip(plen, seqs, strict=True)):
        mask[r, p - 1 : len(q) - 1] = True
    return lp, mask


# ------------------------------------------------------------------ warm-up
def warm_example(p: task.Problem, v: Variant, rng: random.Random) -> str:
    filler = rng.randint(0, v.filler_max)
    return task.make_completion(p.bits, filler=filler, scratch=rng.random() < v.scratch_prob)


@functools.lru_cache(maxsize=1)
def warmup_val() -> list[task.Problem]:
    """A held-out slice of the warm-up split (1 in 8 by a second hash), never trained on."""
    return [p for p in task.problems("warmup") if task.stable_hash(p.prompt + "#wval") % 8 == 0]


def sampled_accuracy(model: Any, tok: Any, probs: list[task.Problem], n: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    samples = generate(model, tok, [p.prompt for p in probs], n, greedy=False, gen=gen)
    return statistics.fmean(task.reward(s.prompt, s.text, finished=s.finished) for s in samples)


def warm_dir(v: Variant, seed: int) -> Path:
    """Where the warm model of a variant and seed is cached (a Hugging Face model directory)."""
    cache = Path(os.environ.get("AGPO_CACHE_DIR", Path.home() / ".cache" / "agpo")) / "gate"
    return cache / f"bitcount-warm-{v.warm_key(seed)}"


def warm_up(v: Variant, seed: int, log: list[str]) -> tuple[Any, Any, dict[str, Any]]:
    """The warm model, from the cache when there (keyed by the warm-up config and seed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = warm_dir(v, seed)
    if (target / "warmup.json").exists():
        meta = json.loads((target / "warmup.json").read_text())
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(target)
        log.append(f"warm model from cache {target}")
        return model, tok, meta | {"cached": True}
    model, tok = build_model(v, seed)
    rng = random.Random(seed + 7)
    val = set(p.prompt for p in warmup_val())
    train = [p for p in task.problems("warmup") if p.prompt not in val]
    buckets: dict[int, list[task.Problem]] = {}
    for p in train:
        buckets.setdefault(p.difficulty, []).append(p)
    keys = sorted(n for n in buckets if n <= v.warmup_max_bits)
    weights = [v.warmup_decay ** max(0, n - v.warmup_decay_from) for n in keys]
    val_rng = random.Random(seed + 11)
    val_probs = [
        val_rng.choice([p for p in warmup_val() if p.difficulty == n] or buckets[n])
        for n in sorted(buckets)
        for _ in range(8)
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=v.warmup_lr, betas=(0.9, 0.98), weight_decay=0.0)
    eos = tok.eos_token_id
    t0 = time.time()
    history: list[tuple[int, float, float]] = []
    step, loss_v = 0, float("nan")
    for step in range(1, v.warmup_max_steps + 1):
        model.train()
        batch = [rng.choice(buckets[rng.choices(keys, weights)[0]]) for _ in range(v.warmup_batch)]
        samples = [
            Sample(p.prompt, [*encode(tok, warm_example(p, v, rng)), eos], "", True) for p in batch
        ]
        lp, mask = seq_logprobs(model, tok, samples)
        loss = -(lp * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for g in opt.param_groups:
            g["lr"] = v.warmup_lr * min(1.0, step / 50)
        opt.step()
        loss_v = float(loss.detach())
        if step % v.warmup_check_every == 0:
            acc = sampled_accuracy(model, tok, val_probs, 4, seed + step)
            history.append((step, round(loss_v, 4), round(acc, 4)))
            log.append(f"warm-up step {step}: loss {loss_v:.3f}, warm-up-val sampled acc {acc:.3f}")
            print(log[-1], flush=True)
            if acc >= v.warmup_target_acc:
                break
    meta = {
        "steps": step,
        "seconds": round(time.time() - t0, 1),
        "final_loss": loss_v,
        "history": history,
    }
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "warmup.json").write_text(json.dumps(meta, indent=1))
    if not target.exists():
        os.replace(tmp, target)
    return model, tok, meta | {"cached": False}


# ------------------------------------------------------------------ gate figures
def gate_figures(model: Any, tok: Any, seed: int) -> dict[str, Any]:
    probs = task.stratified("eval", EVAL_PER_DIFFICULTY)
    gen = torch.Generator().manual_seed(seed + 1000)
    samples = generate(model, tok, [p.prompt for p in probs], GROUP, greedy=False, gen=gen)
    grades = [task.grade(s.prompt, s.text, finished=s.finished) for s in samples]
    correct = [g.correct for g in grades]
    groups = [correct[i : i + GROUP] for i in range(0, len(correct), GROUP)]
    all_c = sum(all(g) for g in groups) / len(groups)
    all_w = sum(not any(g) for g in groups) / len(groups)
    lens = [len(s.ids) for s, c in zip(samples, correct, strict=True) if c]
    reason = [g.reasoning_tokens for g in grades if g.correct]
    by_diff: dict[int, list[bool]] = {}
    for p, g in zip(probs, groups, strict=True):
        by_diff.setdefault(p.difficulty, []).extend(g)
    acc_d = {n: round(statistics.fmean(c), 3) for n, c in sorted(by_diff.items())}
    split_d: dict[str, dict[int, list[bool]]] = {"scratch": {}, "direct": {}}
    for p_, g_ in zip((p for p in probs for _ in range(GROUP)), grades, strict=True):
        kind = "scratch" if g_.used_scratch else "direct"
        split_d[kind].setdefault(p_.difficulty, []).append(g_.correct)
    acc_kind = {
        k: {n: round(statistics.fmean(c), 2) for n, c in sorted(d.items())}
        for k, d in split_d.items()
    }
    long_kind = {k: [c for n, cs in d.items() if n >= 11 for c in cs] for k, d in split_d.items()}
    short = [c for n, cs in by_diff.items() if n <= 6 for c in cs]
    long_ = [c for n, cs in by_diff.items() if n >= 11 for c in cs]

    def scratch_acc(flag: bool) -> float | None:
        sel = [g.correct for g in grades if g.used_scratch == flag]
        return round(statistics.fmean(sel), 3) if sel else None

    mean_len = statistics.fmean(lens) if lens else 0.0
    return {
        "prompts": len(probs),
        "samples": len(samples),
        "accuracy": statistics.fmean(correct),
        "spread": statistics.fmean(short) - statistics.fmean(long_),
        "zero_var": all_c + all_w,
        "all_correct": all_c,
        "all_wrong": all_w,
        "scratch_use": statistics.fmean(g.used_scratch for g in grades),
        "length_cv": (statistics.pstdev(lens) / mean_len) if len(lens) > 1 else 0.0,
        "correct_len_mean": mean_len,
        "correct_reasoning_mean": statistics.fmean(reason) if reason else 0.0,
        "filler_mean": statistics.fmean(g.filler_tokens for g in grades),
        "finished": statistics.fmean(s.finished for s in samples),
        "well_formed": statistics.fmean(g.well_formed for g in grades),
        "acc_with_scratch": scratch_acc(True),
        "acc_without_scratch": scratch_acc(False),
        "acc_by_bits": acc_d,
        "acc_by_bits_scratch": acc_kind["scratch"],
        "acc_by_bits_direct": acc_kind["direct"],
        # informational (not a gate rule): does scratch help where it should (11-14 bits)?
        "scratch_gain_long": (
            statistics.fmean(long_kind["scratch"]) - statistics.fmean(long_kind["direct"])
            if long_kind["scratch"] and long_kind["direct"]
            else None
        ),
    }


def greedy_accuracy(model: Any, tok: Any) -> float:
    probs = task.stratified("eval", GREEDY_PER_DIFFICULTY)
    samples = generate(model, tok, [p.prompt for p in probs], 1, greedy=True, gen=torch.Generator())
    return statistics.fmean(task.reward(s.prompt, s.text, finished=s.finished) for s in samples)


def forced_formats(model: Any, tok: Any, seed: int) -> dict[str, dict[int, float]]:
    """Accuracy by bit count with the format forced by a completion prefix: ``direct``
    (``Answer:``) or ``scratch`` (``a``, the first scratch token), greedy and T=1 (G=8).
    Informational: is scratch useful when the model is made to use it?"""
    probs = task.stratified("eval", EVAL_PER_DIFFICULTY)
    out: dict[str, dict[int, float]] = {}
    for fmt, prefix in (("direct", task.ANSWER_PREFIX), ("scratch", task.TAGS[0])):
        for mode, n in (("greedy", 1), ("T=1", GROUP)):
            gen = torch.Generator().manual_seed(seed + 4000)
            samples = generate(
                model, tok, [p.prompt + prefix for p in probs], n, greedy=n == 1, gen=gen
            )
            acc: dict[int, list[bool]] = {}
            for i, s_ in enumerate(samples):
                p = probs[i // n]
                ok = task.grade(p.prompt, prefix + s_.text, finished=s_.finished).correct
                acc.setdefault(p.difficulty, []).append(ok)
            out[f"{fmt} {mode}"] = {
                k: round(statistics.fmean(v), 2) for k, v in sorted(acc.items())
            }
    return out


# ------------------------------------------------------------------ GRPO
def grpo_job(model_dir: Path, v: Variant, seed: int) -> AGPOJob:
    """Plain GRPO as an AGPOJob: grpo advantages, zero-variance groups kept at advantage 0, no
    length reward, no KL, one on-policy update per batch, token-mean; the warm model from its
    directory, prompts with BOS first (as the warm-up saw them), difficulty-uniform train-split
    prompts, no evaluation (the gate measures before and after itself)."""
    return AGPOJob.model_validate({
        "apiVersion": "agpo.dev/v1alpha1",
        "kind": "AGPOJob",
        "metadata": {"name": f"gate-grpo-s{seed}"},
        "spec": {
            "model": {"name": str(model_dir), "dtype": "float32"},
            "dataset": {
                "source": {"builtin": {"task": "bitcount", "size": v.grpo_steps * v.grpo_prompts,
                                       "seed": seed + 2000}},
                "promptTemplate": "<s>{prompt}",
            },
            "algorithm": {"preset": "agpo", "zeroVariance": "keep", "groupSize": GROUP,
                          "lengthReward": {"type": "none"}},
            "training": {
                "steps": v.grpo_steps, "promptsPerStep": v.grpo_prompts,
                "learningRate": v.grpo_lr, "maxPromptTokens": 48,
                "maxCompletionTokens": MAX_NEW_TOKENS, "temperature": TEMPERATURE, "seed": seed,
                "checkpoint": {"everySteps": v.grpo_steps, "keep": 1},
            },
            "evaluation": {"atEnd": False},
        },
    })  # fmt: skip


class Curve(Callbacks):
    """The GRPO run's figures per step, and a line every 10 steps."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.curve: list[dict[str, float]] = []

    def on_step(self, stats: StepStats, batch: Any) -> None:
        r = stats.rollout
        self.curve.append({"step": stats.step, "reward": r.reward_mean,
                           "zero_var": r.zero_variance_fraction,
                           "tokens": r.completion_tokens_mean,
                           "grad_norm": stats.update.grad_norm})  # fmt: skip
        if stats.step % 10 == 0:
            last = self.curve[-10:]
            self.log.append(
                f"grpo step {stats.step}: reward(last 10) "
                f"{statistics.fmean(x['reward'] for x in last):.3f}, tokens "
                f"{statistics.fmean(x['tokens'] for x in last):.1f}, zero-var "
                f"{statistics.fmean(x['zero_var'] for x in last):.2f}"
            )
            print(self.log[-1], flush=True)


def grpo(v: Variant, seed: int, log: list[str]) -> tuple[list[dict[str, float]], Any]:
    """The GRPO run on the warm model through the product's loop; its curve and the trained
    (served) model."""
    work = Path(tempfile.mkdtemp(prefix="agpo-gate-"))
    rt = Runtime.single(work, work / "cache")
    servers: list[InProcessBackend] = []
    curve = Curve(log)
    train(grpo_job(warm_dir(v, seed), v, seed), rt, backend=keeping(servers), callbacks=curve)
    shutil.rmtree(work, ignore_errors=True)
    return curve.curve, servers[0].model


# ------------------------------------------------------------------ report
def verdicts(f: dict[str, Any], gain: float | None) -> list[tuple[str, str, str, bool]]:
    def inside(x: float, lo_hi: tuple[float, float]) -> bool:
        return lo_hi[0] <= x <= lo_hi[1]

    rows = [
        (
            "accuracy (T=1)",
            f"{f['accuracy']:.3f}",
            f"{ACC_RANGE[0]}-{ACC_RANGE[1]}",
            inside(f["accuracy"], ACC_RANGE),
        ),
        (
            "spread acc(2-6) - acc(11-14)",
            f"{f['spread']:.3f}",
            f">= {SPREAD_MIN}",
            f["spread"] >= SPREAD_MIN,
        ),
        (
            "zero-variance groups",
            f"{f['zero_var']:.3f}",
            f"{ZERO_VAR_RANGE[0]}-{ZERO_VAR_RANGE[1]}",
            inside(f["zero_var"], ZERO_VAR_RANGE),
        ),
        (
            "  all-correct groups",
            f"{f['all_correct']:.3f}",
            f">= {ALL_CORRECT_MIN}",
            f["all_correct"] >= ALL_CORRECT_MIN,
        ),
        (
            "  all-wrong groups",
            f"{f['all_wrong']:.3f}",
            f">= {ALL_WRONG_MIN}",
            f["all_wrong"] >= ALL_WRONG_MIN,
        ),
        (
            "scratch use",
            f"{f['scratch_use']:.3f}",
            f"{SCRATCH_RANGE[0]}-{SCRATCH_RANGE[1]}",
            inside(f["scratch_use"], SCRATCH_RANGE),
        ),
        (
            "CV of correct lengths",
            f"{f['length_cv']:.3f}",
            f">= {LENGTH_CV_MIN}",
            f["length_cv"] >= LENGTH_CV_MIN,
        ),
    ]
    if gain is not None:
        rows.append(
            (
                "GRPO gain (greedy eval)",
                f"{gain:+.3f}",
                f">= {GRPO_GAIN_MIN}",
                gain >= GRPO_GAIN_MIN,
            )
        )
    return rows


def summary(path: Path = LOG) -> str:
    """The log as a markdown table (one row per gate run), for docs/results.md."""
    head = (
        "| # | variant | seed | params | warm-up steps (s) | GRPO lr | acc | spread | zero-var "
        "| all-correct | all-wrong | scratch | len CV | greedy before -> after | gate |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        r = json.loads(line)
        f, c, w = r["figures"], r["config"], r["warmup"]
        fails = [k for k, ok in r["verdicts"].items() if not ok]
        gate = "PASS" if r["pass"] else "FAIL: " + ", ".join(fails)
        greedy = (
            f"{r['greedy_before']:.3f} -> {r['greedy_after']:.3f}"
            if r["greedy_before"] is not None
            else "-"
        )
        lines.append(
            f"| {i} | {r['variant']} | {r['seed']} | {r['params'] / 1e6:.2f}M "
            f"| {w['steps']} ({w['seconds']:.0f}) | {c['grpo_lr']:g} | {f['accuracy']:.3f} "
            f"| {f['spread']:.3f} | {f['zero_var']:.3f} | {f['all_correct']:.3f} "
            f"| {f['all_wrong']:.3f} | {f['scratch_use']:.3f} | {f['length_cv']:.3f} "
            f"| {greedy} | {gate} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--variant", default="tiny-mix", choices=sorted(VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--grpo-lr", type=float, default=None, help="override the variant's GRPO learning rate"
    )
    ap.add_argument("--grpo-steps", type=int, default=None)
    ap.add_argument(
        "--warmup-target", type=float, default=None, help="override the warm-up stop accuracy"
    )
    ap.add_argument("--warmup-max-steps", type=int, default=None)
    ap.add_argument(
        "--skip-grpo", action="store_true", help="only the warm-up and the sampling figures"
    )
    ap.add_argument("--no-log", action="store_true", help="do not append to study/gate_log.jsonl")
    ap.add_argument("--summary", action="store_true", help="print the log as a markdown table")
    ap.add_argument(
        "--formats",
        action="store_true",
        help="also print accuracy by bit count with the format forced, before and after GRPO",
    )
    args = ap.parse_args(argv)
    if args.summary:
        print(summary(), end="")
        return 0
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    v = VARIANTS[args.variant]
    over: dict[str, Any] = {}
    if args.grpo_lr is not None:
        over["grpo_lr"] = args.grpo_lr
    if args.grpo_steps is not None:
        over["grpo_steps"] = args.grpo_steps
    if args.warmup_target is not None:
        over["warmup_target_acc"] = args.warmup_target
    if args.warmup_max_steps is not None:
        over["warmup_max_steps"] = args.warmup_max_steps
    v = Variant(**(asdict(v) | over))
    t0 = time.time()
    log: list[str] = []
    model, tok, meta = warm_up(v, args.seed, log)
    n_params = sum(p.numel() for p in model.parameters())
    t_warm = time.time() - t0
    figs = gate_figures(model, tok, args.seed)
    t_fig = time.time() - t0 - t_warm
    gain, before, after, curve = None, None, None, []
    forced_before: dict[str, dict[int, float]] = {}
    forced_after: dict[str, dict[int, float]] = {}
    if not args.skip_grpo:
        before = greedy_accuracy(model, tok)
        if args.formats:
            forced_before = forced_formats(model, tok, args.seed)
        curve, model = grpo(v, args.seed, log)
        if args.formats:
            forced_after = forced_formats(model, tok, args.seed)
        after = greedy_accuracy(model, tok)
        gain = after - before
    runtime = time.time() - t0
    rows = verdicts(figs, gain)
    passed = all(r[3] for r in rows) and gain is not None
    print(
        f"\nlearnability gate: variant {args.variant}, seed {args.seed}, {n_params / 1e6:.2f}M params"
    )
    print(
        f"warm-up: {meta['steps']} steps, {meta['seconds']} s{' (cached)' if meta.get('cached') else ''}"
    )
    print(
        f"eval set: {figs['prompts']} prompts x G={GROUP}, T={TEMPERATURE}; greedy set {GREEDY_PER_DIFFICULTY}/bit count"
    )
    print(f"{'criterion':32} {'value':>8}  {'rule':>12}  verdict")
    for name, val, rule, ok in rows:
        print(f"{name:32} {val:>8}  {rule:>12}  {'PASS' if ok else 'FAIL'}")
    if gain is None:
        print("GRPO gain (greedy eval)               -  not run       FAIL")
    else:
        print(
            f"greedy eval accuracy before {before:.3f}, after {after:.3f} ({v.grpo_steps} steps, lr {v.grpo_lr})"
        )
    print(f"accuracy by bits: {figs['acc_by_bits']}")
    print(f"  with scratch:   {figs['acc_by_bits_scratch']}")
    print(f"  direct:         {figs['acc_by_bits_direct']}")
    if figs["scratch_gain_long"] is not None:
        print(f"info: acc(scratch) - acc(direct) on 11-14 bits {figs['scratch_gain_long']:+.3f}")
    print(
        f"acc with scratch {figs['acc_with_scratch']}, without {figs['acc_without_scratch']}; "
        f"finished {figs['finished']:.3f}, well-formed {figs['well_formed']:.3f}, "
        f"correct length mean {figs['correct_len_mean']:.1f}, filler mean {figs['filler_mean']:.2f}"
    )
    for when, forced in (("before", forced_before), ("after", forced_after)):
        for name, accs in forced.items():
            print(f"forced {name:14} {when:6} GRPO: {accs}")
    print(f"GATE {'PASS' if passed else 'FAIL'}")
    print(
        f"runtime {runtime:.0f} s (warm-up {t_warm:.0f} s, figures {t_fig:.0f} s); torch {torch.__version__}, "
        f"python {platform.python_version()}, {platform.machine()}, threads {torch.get_num_threads()}, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    if not args.no_log:
        rec = {
            "variant": args.variant,
            "config": asdict(v),
            "seed": args.seed,
            "params": n_params,
            "warmup": meta,
            "figures": figs,
            "greedy_before": before,
            "greedy_after": after,
            "gain": gain,
            "verdicts": {r[0].strip(): r[3] for r in rows},
            "pass": passed,
            "runtime_s": round(runtime, 1),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "grpo_curve": curve,
            "forced_formats": {"before": forced_before, "after": forced_after},
        }
        with LOG.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
