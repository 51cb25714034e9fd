"""The second edition's gate (issue #19): does reasoning pay on the ``chainsum`` task, and is
there overthinking to remove? Run before any study code of the second edition changes.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python study/gate2.py --variant tiny-600

Everything runs through the product: a variant is an ``AGPOJob`` on ``builtin:tiny`` and the
builtin ``chainsum`` task, its warm base is the trainer's own format warm-up
(``training.formatWarmupSteps``, the task's ``WarmupRecipe``, cached like `agpo run`'s), the
figures are sampled with ``InProcessBackend`` (what the study samples with) from the prompts
``PromptEncoder`` makes, and the GRPO run is ``agpo_trainer.train.train``. It prints
PASS/FAIL per rule and appends a record to ``study/gate2_log.jsonl`` (failures included).

Rule set 2 (see RULESET) judges a variant on three seeds, each run on its own:

    for s in 0 1 2; do .venv/bin/python study/gate2.py --variant V --seed $s; done
    .venv/bin/python study/gate2.py --judge V

The rules below were written down before any chainsum figure was measured (commit order
shows it): the first edition's, re-bucketed for 2-8 operands, plus three that make the token
claim meaningful (reasoning pays on hard prompts, not on easy ones, and easy prompts do get
reasoning that a length reward could remove).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from gate import Curve
from runner import load_policy, runtime

from agpo_api.models import AGPOJob
from agpo_trainer.data import apply_template
from agpo_trainer.prompts import PromptEncoder
from agpo_trainer.rollout.inprocess import InProcessBackend, keeping
from agpo_trainer.tasks import bitcount_copy, chainsum
from agpo_trainer.train import train

# ------------------------------------------------------------------ decision rules (fixed)
# The easiest and the hardest difficulty buckets of each task, fixed before its first figure:
# chainsum's with the rules (2-8 operands); bitcount-copy's (2-14 bits) when it was added, the
# first gate's own short (2-6) and long (11-14) buckets.
EASY_HARD: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "chainsum": ((2, 3), (7, 8)),
    "bitcount-copy": ((2, 3, 4, 5, 6), (11, 12, 13, 14)),
}
ACC_RANGE = (0.30, 0.65)  # mean sampled accuracy on eval (T=1, G=8)
SPREAD_MIN = 0.20  # accuracy(easy) - accuracy(hard)
ZERO_VAR_RANGE = (0.20, 0.60)  # fraction of groups with zero reward variance
ALL_CORRECT_MIN = 0.05
ALL_WRONG_MIN = 0.05
SCRATCH_RANGE = (0.35, 0.65)  # fraction of sampled completions with scratch
LENGTH_CV_MIN = 0.30  # coefficient of variation of completion tokens of correct answers
GRPO_GAIN_MIN = 0.05  # greedy eval accuracy after - before a 40-step plain-GRPO run
# new in the second edition (issue #19), on forced formats at T=1, G=8:
FORCED_HARD_GAIN_MIN = 0.10  # acc(forced scratch) - acc(forced direct) on HARD
FORCED_EASY_MARGIN = 0.03  # acc(forced direct) >= acc(forced scratch) - this on EASY ("match")
EASY_SCRATCH_MIN = 0.30  # sampled completions on EASY prompts that use scratch

# Rule set 2 (committed before any of its figures; docs/results.md says why): the thresholds
# above unchanged, two changes in how they are measured and combined.
# 1. The easy-bucket rules (forced direct vs scratch, sampled scratch use) are measured on more
#    easy prompts: bitcount's eval split holds only 13 strings of 2-6 bits, so those figures
#    swung 10-20 points between neighbouring variants. The easy set adds the train split's (the
#    warm-up draws from its own split, and the study's test split stays unseen).
# 2. A variant is judged on RULE_SEEDS, each its own warm base (the study draws one per seed):
#    the three premise rules (reasoning pays on hard prompts, not on easy ones, and easy prompts
#    get scratch) must hold on every seed; the first edition's rules (accuracy, spread,
#    zero-variance groups, scratch use, length CV, GRPO gain) on the mean over the seeds, which
#    is what the study's per-arm estimates average over.
RULESET = 2
EASY_SPLITS = ("eval", "train")
EASY_PER_BUCKET = 40  # per split and easy bucket
RULE_SEEDS = (0, 1, 2)
PREMISE_RULES = ("forced_hard_gain", "forced_easy_gain", "easy_scratch_use")

GROUP = 8
TEMPERATURE = 1.0
PER_BUCKET = 40  # sampling set: up to 40 eval prompts per bucket (chainsum 2 operands: ~10)
GREEDY_PER_BUCKET = 100  # greedy before/after set
#: longest grammatical completion + EOS, with room: chainsum 6 + 24 + 1 + 8 = 39;
#: bitcount-copy 6 + 14 * 3 + 5 (two-digit counts) + 1 + 9 = 63
MAX_TOKENS = {"chainsum": 48, "bitcount-copy": 72}
TASK_MODULES = {"chainsum": chainsum, "bitcount-copy": bitcount_copy}
EXAMPLE = {"chainsum": "3592", "bitcount-copy": "10110"}  # the logged example of the scratch
LIVE_RECIPE_KEYS = {
    "scratch_prob",
    "batch",
    "decay",
    "decay_from",
    "direct_max_bits",
}  # read when batches are made
SAMPLE_SEED = 1000
LOG = Path(__file__).with_name("gate2_log.jsonl")


@dataclass(frozen=True)
class Variant:
    """A task, a warm-up length (and recipe overrides) on ``builtin:tiny``, the GRPO check."""

    task: str = "chainsum"
    warmup_steps: int = 600
    recipe: dict[str, Any] = field(default_factory=dict)  # chainsum.WARMUP_RECIPE overrides
    # None: builtin:tiny; else build_tiny_model's arguments for a larger byte-level Qwen2, built
    # into the cache (initializer_range 0.02: the recipe's re-initialisation is tiny's only)
    model: dict[str, Any] | None = None
    grpo_steps: int = 40
    grpo_prompts: int = 16
    grpo_lr: float = 1e-4


def bc_copy(steps: int, recipe: dict[str, Any] | None = None) -> Variant:
    """A bitcount-copy variant: warm-up steps and recipe overrides."""
    return Variant(task="bitcount-copy", warmup_steps=steps, recipe=recipe or {})


VARIANTS: dict[str, Variant] = {
    "tiny-300": Variant(warmup_steps=300),
    "tiny-600": Variant(warmup_steps=600),
    "tiny-1200": Variant(warmup_steps=1200),
    "tiny-3000": Variant(warmup_steps=3000),
    # from here on the scratch copies each operand before adding it (WARMUP_RECIPE version 2)
    "tiny-1500": Variant(warmup_steps=1500),
    # bitcount with the copy-then-count scratch: bitcount's warm-up recipe (long strings rarely)
    "bc-copy-400": bc_copy(400),
    "bc-copy-800": bc_copy(800),
    "bc-copy-1500": bc_copy(1500),
    # long strings rarer still (weight 0.3 ** (n - 6) above 6 bits): a direct count must
    # extrapolate to them, the running count does not
    "bc-copy-1500-d3": bc_copy(1500, {"decay": 0.3}),
    # direct answers shown only up to 12 bits (13-14: always the running count), so a direct
    # answer must extrapolate there; with long strings as rare as before, and less rare
    "bc-copy-1500-dmax12": bc_copy(1500, {"direct_max_bits": 12}),
    "bc-copy-1500-dmax12-d7": bc_copy(1500, {"direct_max_bits": 12, "decay": 0.7}),
    # between the two (the first: scratch not learned on 13-14 bits; the second: too good)
    "bc-copy-1500-dmax12-d6": bc_copy(1500, {"direct_max_bits": 12, "decay": 0.6}),
    "bc-copy-1000-dmax12-d7": bc_copy(1000, {"direct_max_bits": 12, "decay": 0.7}),
    # shorter warm-ups of the last: a mediocre start with the running count already useful
    "bc-copy-600-dmax12-d7": bc_copy(600, {"direct_max_bits": 12, "decay": 0.7}),
    "bc-copy-750-dmax12-d7": bc_copy(750, {"direct_max_bits": 12, "decay": 0.7}),
    # direct answers only up to 10 bits: every hard bucket (11-14) is extrapolation for them
    "bc-copy-600-dmax10-d7": bc_copy(600, {"direct_max_bits": 10, "decay": 0.7}),
    "bc-copy-600-dmax10-d7-s35": bc_copy(
        600, {"direct_max_bits": 10, "decay": 0.7, "scratch_prob": 0.35}
    ),
    # the same, shorter (accuracy was above 0.65, all-wrong groups below 5%)
    "bc-copy-400-dmax10-d7-s35": bc_copy(
        400, {"direct_max_bits": 10, "decay": 0.7, "scratch_prob": 0.35}
    ),
    "bc-copy-500-dmax10-d7-s35": bc_copy(
        500, {"direct_max_bits": 10, "decay": 0.7, "scratch_prob": 0.35}
    ),
    # around the last (accuracy 0.671, all-wrong 4.6%, scratch use 0.688): less scratch, or
    # long strings a little rarer
    "bc-copy-500-dmax10-d7-s30": bc_copy(
        500, {"direct_max_bits": 10, "decay": 0.7, "scratch_prob": 0.3}
    ),
    "bc-copy-500-dmax10-d6-s35": bc_copy(
        500, {"direct_max_bits": 10, "decay": 0.6, "scratch_prob": 0.35}
    ),
    # rule set 2 (three seeds each). Run 20 passed on seed 0 only: after 500 steps the running
    # count was right 37%, 24% and 9% of the time on seeds 0-2, so the scratch was still being
    # learned. Longer warm-ups, with long strings as rare or rarer (accuracy stayed <= 0.65
    # only while 11-14 bits were hard for the scratch too):
    "bc-copy-800-dmax10-d6-s35": bc_copy(
        800, {"direct_max_bits": 10, "decay": 0.6, "scratch_prob": 0.35}
    ),
    "bc-copy-1000-dmax10-s35": bc_copy(1000, {"direct_max_bits": 10, "scratch_prob": 0.35}),
    # direct answers only up to 8 bits: every hard bucket is 3+ bits of extrapolation for a
    # direct count (seed 1 of run 21 extrapolated from 10 to 11-14 bits at 0.43-0.68)
    "bc-copy-800-dmax8-d6-s30": bc_copy(
        800, {"direct_max_bits": 8, "decay": 0.6, "scratch_prob": 0.3}
    ),
    # 4 layers, hidden 128, head_dim 64 (1.05M): room for lookup, then add
    "small-1500": Variant(
        warmup_steps=1500,
        model={"num_layers": 4, "intermediate_size": 512, "num_heads": 2, "num_kv_heads": 1},
    ),
}


def model_name(v: Variant) -> str:
    """The job's ``model.name``: ``builtin:tiny``, or the larger model's directory (built once)."""
    if v.model is None:
        return "builtin:tiny"
    from agpo_trainer.models.cache import build_once
    from agpo_trainer.models.tiny import build_tiny_model

    args = {"initializer_range": 0.02, **v.model}
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("AGPO_CACHE_DIR", Path.home() / ".cache" / "agpo"))
    return str(build_once(cache / "gate2" / f"model-{key}", lambda d: build_tiny_model(d, **args)))


def job(v: Variant, seed: int, *, steps: int) -> AGPOJob:
    """Plain GRPO on the warm base (the first study's base: grpo advantages, zero-variance
    groups kept, no length reward, token-mean, no KL)."""
    return AGPOJob.model_validate({
        "apiVersion": "agpo.dev/v1alpha1",
        "kind": "AGPOJob",
        "metadata": {"name": f"gate2-s{seed}"},
        "spec": {
            "model": {"name": model_name(v), "dtype": "float32"},
            "dataset": {
                "source": {"builtin": {"task": v.task, "size": max(steps, 1) * v.grpo_prompts,
                                       "seed": seed + 2000}},
                "promptTemplate": "{prompt}",
            },
            "algorithm": {"preset": "agpo", "zeroVariance": "keep", "groupSize": GROUP,
                          "lengthReward": {"type": "none"}, "klCoefficient": 0.0},
            "training": {
                "steps": max(steps, 1), "promptsPerStep": v.grpo_prompts,
                "learningRate": v.grpo_lr, "lrSchedule": "constant", "warmupSteps": 0,
                "maxPromptTokens": 32, "maxCompletionTokens": MAX_TOKENS[v.task],
                "temperature": TEMPERATURE, "seed": seed,
                "formatWarmupSteps": v.warmup_steps,
                "checkpoint": {"everySteps": max(steps, 1), "keep": 1},
            },
            "evaluation": {"atEnd": False},
        },
    })  # fmt: skip


# ------------------------------------------------------------------ sampling
Graded = list[tuple[Any, Any, int]]  # (problem, the task's Grade, completion tokens)


def sample(
    task: Any, model: Any, tok: Any, j: AGPOJob, probs: list[Any], prefix: str, n: int, seed: int
) -> Graded:
    """``n`` completions per problem (T=1, or greedy for n=1) after ``prefix`` (forces a
    format: ``Answer:`` or the first tag), graded with the prefix put back."""
    encode = PromptEncoder(tok, j.spec.dataset)
    ids = [encode(apply_template(j.spec.dataset.prompt_template, p.prompt) + prefix) for p in probs]
    temp = 0.0 if n == 1 else TEMPERATURE
    comps = InProcessBackend(model, tok).generate(
        ids, n=n, max_tokens=j.spec.training.max_completion_tokens, temperature=temp, seed=seed
    )
    return [
        (probs[i // n], task.grade(probs[i // n].prompt, prefix + c.text, finished=not c.truncated),
         len(c.token_ids))
        for i, c in enumerate(comps)
    ]  # fmt: skip


def _acc(rows: Graded, buckets: tuple[int, ...]) -> float:
    sel = [g.correct for p, g, _ in rows if p.difficulty in buckets]
    return statistics.fmean(sel) if sel else float("nan")


def _by_bucket(rows: Graded) -> dict[int, float]:
    out: dict[int, list[bool]] = {}
    for p, g, _ in rows:
        out.setdefault(p.difficulty, []).append(g.correct)
    return {n: round(statistics.fmean(c), 3) for n, c in sorted(out.items())}


def easy_set(task_name: str) -> list[Any]:
    """Rule set 2's easy prompts: up to EASY_PER_BUCKET per easy bucket from each EASY_SPLITS."""
    task = TASK_MODULES[task_name]
    easy = EASY_HARD[task_name][0]
    return [p for s in EASY_SPLITS for p in task.stratified(s, EASY_PER_BUCKET)
            if p.difficulty in easy]  # fmt: skip


def figures(v: Variant, model: Any, tok: Any, j: AGPOJob, seed: int) -> dict[str, Any]:
    task = TASK_MODULES[v.task]
    easy, hard = EASY_HARD[v.task]
    probs = task.stratified("eval", PER_BUCKET)
    easy_probs = easy_set(v.task)
    rows = sample(task, model, tok, j, probs, "", GROUP, seed + SAMPLE_SEED)
    correct = [g.correct for _, g, _ in rows]
    groups = [correct[i : i + GROUP] for i in range(0, len(correct), GROUP)]
    all_c = statistics.fmean(all(g) for g in groups)
    all_w = statistics.fmean(not any(g) for g in groups)
    lens = [n for _, g, n in rows if g.correct]
    mean_len = statistics.fmean(lens) if lens else 0.0
    formats = (("direct", task.ANSWER_PREFIX), ("scratch", task.TAGS[0]))
    forced = {
        name: sample(task, model, tok, j, probs, prefix, GROUP, seed + SAMPLE_SEED + 1)
        for name, prefix in formats
    }
    # the easy-bucket rules on the easy set (rule set 2), its own draws
    easy_rows = [g for _, g, _ in sample(task, model, tok, j, easy_probs, "", GROUP,
                                         seed + SAMPLE_SEED + 2)]  # fmt: skip
    forced_easy = {
        name: sample(task, model, tok, j, easy_probs, prefix, GROUP, seed + SAMPLE_SEED + 3)
        for name, prefix in formats
    }
    return {
        "prompts": len(probs),
        "easy_prompts": len(easy_probs),
        "samples": len(rows),
        "accuracy": statistics.fmean(correct),
        "spread": _acc(rows, easy) - _acc(rows, hard),
        "zero_var": all_c + all_w,
        "all_correct": all_c,
        "all_wrong": all_w,
        "scratch_use": statistics.fmean(g.used_scratch for _, g, _ in rows),
        "easy_scratch_use": statistics.fmean(g.used_scratch for g in easy_rows),
        "length_cv": statistics.pstdev(lens) / mean_len if len(lens) > 1 else 0.0,
        "correct_len_mean": mean_len,
        "filler_mean": statistics.fmean(g.filler_tokens for _, g, _ in rows),
        "well_formed": statistics.fmean(g.well_formed for _, g, _ in rows),
        "acc_by_ops": _by_bucket(rows),
        "forced_direct_by_ops": _by_bucket(forced["direct"]),
        "forced_scratch_by_ops": _by_bucket(forced["scratch"]),
        "forced_hard_gain": _acc(forced["scratch"], hard) - _acc(forced["direct"], hard),
        "forced_easy_gain": _acc(forced_easy["direct"], easy) - _acc(forced_easy["scratch"], easy),
        "forced_easy_direct": _acc(forced_easy["direct"], easy),
        "forced_easy_scratch": _acc(forced_easy["scratch"], easy),
        "scratch_right": statistics.fmean(bool(g.scratch_correct) for _, g, _ in forced["scratch"]),
    }


def greedy_accuracy(v: Variant, model: Any, tok: Any, j: AGPOJob) -> float:
    task = TASK_MODULES[v.task]
    probs = task.stratified("eval", GREEDY_PER_BUCKET)
    return statistics.fmean(g.correct for _, g, _ in sample(task, model, tok, j, probs, "", 1, 0))


# ------------------------------------------------------------------ verdicts
@dataclass(frozen=True)
class Rule:
    """One decision rule on one figure (``gain``: the GRPO check): ``lo <= x (<= hi)``."""

    key: str
    label: str  # {e} / {h}: the easy / hard buckets
    lo: float
    hi: float | None = None
    fmt: str = ".3f"

    def ok(self, x: float) -> bool:
        return self.lo <= x and (self.hi is None or x <= self.hi)

    def text(self) -> str:
        return f">= {self.lo}" if self.hi is None else f"{self.lo}-{self.hi}"

    def name(self, task: str) -> str:
        easy, hard = EASY_HARD[task]
        return self.label.format(e=f"{easy[0]}-{easy[-1]}", h=f"{hard[0]}-{hard[-1]}")


RULES = (
    Rule("accuracy", "accuracy (T=1)", *ACC_RANGE),
    Rule("spread", "spread acc({e}) - acc({h})", SPREAD_MIN),
    Rule("zero_var", "zero-variance groups", *ZERO_VAR_RANGE),
    Rule("all_correct", "  all-correct groups", ALL_CORRECT_MIN),
    Rule("all_wrong", "  all-wrong groups", ALL_WRONG_MIN),
    Rule("scratch_use", "scratch use", *SCRATCH_RANGE),
    Rule("length_cv", "CV of correct lengths", LENGTH_CV_MIN),
    Rule("forced_hard_gain", "forced scratch - direct ({h})", FORCED_HARD_GAIN_MIN, fmt="+.3f"),
    Rule("forced_easy_gain", "forced direct - scratch ({e})", -FORCED_EASY_MARGIN, fmt="+.3f"),
    Rule("easy_scratch_use", "sampled scratch use ({e})", EASY_SCRATCH_MIN),
    Rule("gain", "GRPO gain (greedy eval)", GRPO_GAIN_MIN, fmt="+.3f"),
)


def verdicts(f: dict[str, Any], gain: float | None, task: str) -> list[tuple[str, str, str, bool]]:
    """(rule, value, threshold, passed) per rule on one seed's figures."""
    vals = {**f, "gain": gain}
    return [
        (r.name(task), format(vals[r.key], r.fmt), r.text(), r.ok(vals[r.key]))
        for r in RULES
        if vals[r.key] is not None
    ]


def judge(records: list[dict[str, Any]], task: str) -> list[tuple[str, str, str, bool]]:
    """Rule set 2 over one variant's seeds: the premise rules on every seed (the value shown is
    the worst seed's), the others on the mean over the seeds."""
    rows = []
    for r in RULES:
        vals = [rec["gain"] if r.key == "gain" else rec["figures"][r.key] for rec in records]
        if r.key in PREMISE_RULES:
            shown, ok = min(vals), all(r.ok(x) for x in vals)
            how = "every seed"
        else:
            shown = statistics.fmean(vals)
            ok, how = r.ok(shown), "mean"
        rows.append((f"{r.name(task)} [{how}]", format(shown, r.fmt), r.text(), ok))
    return rows


def records_of(variant: str, path: Path = LOG) -> list[dict[str, Any]]:
    """The variant's rule-set-2 records, one per seed of RULE_SEEDS (the latest of each)."""
    by_seed: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["variant"] == variant and rec.get("ruleset", 1) == RULESET:
            by_seed[rec["seed"]] = rec
    return [by_seed[s] for s in RULE_SEEDS if s in by_seed]


def summary(path: Path = LOG) -> str:
    """The log as a markdown table (one row per gate run), for docs/results.md. The forced
    columns are the rules' pooled figures (easy / hard buckets of the record's task)."""
    out = [
        "| # | rules | task, variant | seed | warm-up steps | acc | spread | zero-var (correct/wrong) "
        "| scratch (easy) | forced scratch - direct, hard | forced direct - scratch, easy "
        "| greedy before -> after | gate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, line in enumerate(path.read_text().splitlines(), 1):
        r = json.loads(line)
        f = r["figures"]
        fails = [k for k, ok in r["verdicts"].items() if not ok]
        greedy = (f"{r['greedy_before']:.3f} -> {r['greedy_after']:.3f}"
                  if r["greedy_after"] is not None else "-")  # fmt: skip
        out.append(
            f"| {i} | {r.get('ruleset', 1)} | {r['config'].get('task', 'chainsum')} {r['variant']} "
            f"| {r['seed']} "
            f"| {r['config']['warmup_steps']} | {f['accuracy']:.3f} | {f['spread']:.3f} "
            f"| {f['zero_var']:.2f} ({f['all_correct']:.2f}/{f['all_wrong']:.2f}) "
            f"| {f['scratch_use']:.2f} ({f['easy_scratch_use']:.2f}) "
            f"| {f['forced_hard_gain']:+.3f} | {f['forced_easy_gain']:+.3f} | {greedy} "
            f"| {'PASS' if r['pass'] else 'FAIL: ' + ', '.join(fails)} |"
        )
    return "\n".join(out) + "\n"


def print_judgement(variant: str) -> int:
    """Rule set 2's verdict on a variant: every seed of RULE_SEEDS must be in the log."""
    recs = records_of(variant)
    missing = sorted(set(RULE_SEEDS) - {r["seed"] for r in recs})
    if missing or any(r["gain"] is None for r in recs):
        print(f"gate2: variant {variant} lacks rule-set-{RULESET} runs with the GRPO check on "
              f"seeds {missing or 'with --skip-grpo'}; run: study/gate2.py --variant {variant} "
              f"--seed N")  # fmt: skip
        return 2
    task = VARIANTS[variant].task
    rows = judge(recs, task)
    print(f"gate2 rule set {RULESET}: {task}, variant {variant}, seeds {list(RULE_SEEDS)}")
    print(f"{'criterion':50} {'value':>8}  {'rule':>12}  verdict")
    for name, val, rule, ok in rows:
        print(f"{name:50} {val:>8}  {rule:>12}  {'PASS' if ok else 'FAIL'}")
    passed = all(r[3] for r in rows)
    print(f"VARIANT {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--variant", default="tiny-600", choices=sorted(VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-grpo", action="store_true", help="only the warm base's figures")
    ap.add_argument("--no-log", action="store_true", help=f"do not append to {LOG.name}")
    ap.add_argument("--summary", action="store_true", help="print the log as a markdown table")
    ap.add_argument("--judge", metavar="VARIANT", choices=sorted(VARIANTS),
                    help=f"rule set {RULESET}'s verdict on the variant's logged seeds "
                         f"{list(RULE_SEEDS)}")  # fmt: skip
    args = ap.parse_args(argv)
    if args.summary:
        print(summary(), end="")
        return 0
    if args.judge:
        return print_judgement(args.judge)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    v = VARIANTS[args.variant]
    task = TASK_MODULES[v.task]
    if set(v.recipe) - LIVE_RECIPE_KEYS:  # the optimizer's were read when the task registered
        raise SystemExit(
            f"variant {args.variant}: only {sorted(LIVE_RECIPE_KEYS)} can be overridden"
        )
    if v.task == "bitcount-copy":  # variants start from the first recipe (the gate's runs did)
        task.WARMUP_RECIPE.clear()
        task.WARMUP_RECIPE.update(bitcount_copy.RECIPE_V1)
    task.WARMUP_RECIPE.update(v.recipe)  # part of the warm-up cache key: no stale weights
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="agpo-gate2-"))
    try:
        j = job(v, args.seed, steps=v.grpo_steps)
        policy = load_policy(j, work)
        model, tok = policy.module, policy.tokenizer
        t_warm = time.time() - t0
        figs = figures(v, model, tok, j, args.seed)
        before = after = gain = None
        curve: list[dict[str, float]] = []
        if not args.skip_grpo:
            before = greedy_accuracy(v, model, tok, j)
            servers: list[InProcessBackend] = []
            c = Curve([])
            train(j, runtime(work), backend=keeping(servers), callbacks=c)
            curve = c.curve
            after = greedy_accuracy(v, servers[0].model, tok, j)
            gain = after - before
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = verdicts(figs, gain, v.task)
    passed = gain is not None and all(r[3] for r in rows)
    print(f"\ngate2: {v.task}, variant {args.variant}, seed {args.seed}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, warm-up "
          f"{v.warmup_steps} steps ({t_warm:.0f} s incl. load)")  # fmt: skip
    print(f"eval: {figs['prompts']} prompts x G={GROUP}, T={TEMPERATURE}")
    print(f"{'criterion':36} {'value':>8}  {'rule':>12}  verdict")
    for name, val, rule, ok in rows:
        print(f"{name:36} {val:>8}  {rule:>12}  {'PASS' if ok else 'FAIL'}")
    if before is not None:
        print(f"greedy eval accuracy before {before:.3f}, after {after:.3f}")
    for k in ("acc_by_ops", "forced_direct_by_ops", "forced_scratch_by_ops"):
        print(f"{k:22} {figs[k]}")
    print(f"forced scratch right {figs['scratch_right']:.3f}, well-formed "
          f"{figs['well_formed']:.3f}, correct length mean {figs['correct_len_mean']:.1f}")  # fmt: skip
    seconds = time.time() - t0
    print(f"this seed: {'PASS' if passed else 'FAIL'} (the variant's verdict: --judge "
          f"{args.variant}, once seeds {list(RULE_SEEDS)} are logged)")  # fmt: skip
    print(f"GATE {'PASS' if passed else 'FAIL'}; runtime {seconds:.0f} s; torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, load "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    if not args.no_log:
        rec = {
            "variant": args.variant, "config": asdict(v), "seed": args.seed,
            "recipe": dict(task.WARMUP_RECIPE), "scratch_example": task.make_completion(EXAMPLE[v.task], scratch=True),
            "figures": figs, "greedy_before": before,
            "greedy_after": after, "gain": gain,
            "verdicts": {r[0].strip(): r[3] for r in rows}, "pass": passed, "ruleset": RULESET,
            "runtime_s": round(seconds, 1), "torch": torch.__version__,
            "python": platform.python_version(), "load": os.getloadavg(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "grpo_curve": curve,
        }  # fmt: skip
        with LOG.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
