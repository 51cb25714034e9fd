"""One arm x seed of the study through the product's own loop, with in-process generation.

What runs is ``agpo_trainer.train.train`` itself (the job's data, ``Policy.load``, the cached
task's warm-up shared with `agpo run`, ``Experience.collect``, ``train_step``, the weight
push, checkpoints, the ``Evaluator``) with :class:`InProcessBackend` as its rollout backend
instead of the vLLM servers; the study's figures are recorded through the loop's
:class:`Callbacks`.

Records (JSONL, one object a line) go to ``<out>/<arm>-s<seed>/``: ``steps.jsonl`` (per RL
step), ``eval.jsonl`` (periodic greedy eval on the eval split), ``test.jsonl`` (test
endpoints at the budget checkpoint and at the last step), ``spec.json`` (the resolved job).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from arms import Budget, manifest

from agpo_api.models import AGPOJob
from agpo_api.resolved import resolve
from agpo_trainer.data import apply_template, load_examples
from agpo_trainer.evaluation import evaluation_sets
from agpo_trainer.experience import Batch
from agpo_trainer.policy import Policy
from agpo_trainer.prompts import PromptEncoder
from agpo_trainer.rollout.inprocess import InProcessBackend, keeping
from agpo_trainer.runtime import Runtime
from agpo_trainer.stats import EvalStats, StepStats
from agpo_trainer.tasks import bitcount, bitcount_copy
from agpo_trainer.train import Callbacks, train
from agpo_trainer.warmup import format_warmup

TEST_SEED = 31_337  # sampling seed of the mean@k set (per seed, the same in every arm)
#: the budget's task -> its module (problems, splits, grader: the same interface)
TASKS: dict[str, Any] = {"bitcount": bitcount, "bitcount-copy": bitcount_copy}


def cache_dir() -> Path:
    return Path(os.environ.get("AGPO_CACHE_DIR", Path.home() / ".cache" / "agpo"))


def runtime(workdir: Path) -> Runtime:
    return Runtime.single(workdir, cache_dir())


def load_policy(job: AGPOJob, workdir: Path) -> Policy:
    """The warm base of a run without training it: ``train``'s set-up up to the warm-up
    (seeds, data, ``Policy.load``, the cached warm-up), for the base endpoints."""
    spec = resolve(job.spec)
    random.seed(spec.training.seed)
    torch.manual_seed(spec.training.seed)
    examples, _ = evaluation_sets(spec, load_examples(spec.dataset, None), None)
    policy = Policy.load(spec, runtime(workdir))
    if spec.training.format_warmup_steps:
        format_warmup(policy, examples, spec, spec.training.format_warmup_steps)
    return policy


# --------------------------------------------------------------------------- grading
def graded(task: Any, prompt: str, text: str, finished: bool) -> dict[str, Any]:
    g = task.grade(prompt, text, finished=finished)
    return {
        "correct": g.correct,
        "reasoning": g.reasoning_tokens,
        "filler": g.filler_tokens,
        "scratch": g.scratch_tokens,
        "used_scratch": g.used_scratch,
    }


def bucket_table(rows: list[tuple[int, dict[str, Any], int]]) -> dict[str, dict[str, float]]:
    """Per bit count: n, correct, and sums over correct answers (reasoning, filler, scratch,
    completion tokens, scratch use): enough to recompute every endpoint."""
    out: dict[str, dict[str, float]] = {}
    for bits, g, tokens in rows:
        b = out.setdefault(
            str(bits),
            {"n": 0, "correct": 0, "reasoning": 0, "filler": 0, "scratch": 0, "tokens": 0,
             "used_scratch": 0, "used_scratch_all": 0},
        )  # fmt: skip
        b["n"] += 1
        b["used_scratch_all"] += g["used_scratch"]
        if g["correct"]:
            b["correct"] += 1
            for k in ("reasoning", "filler", "scratch", "used_scratch"):
                b[k] += g[k]
            b["tokens"] += tokens
    return out


def test_endpoints(model: Any, tok: Any, job: AGPOJob, b: Budget) -> dict[str, Any]:
    """Greedy accuracy on ``stratified("test", ...)`` and ``k`` samples at T=1 on a smaller
    stratified test set (mean@k, pass@k, tokens of correct answers), per bit count."""
    spec, task = job.spec, TASKS[b.task]
    client = InProcessBackend(model, tok)

    def ids(ps: list[Any]) -> list[list[int]]:
        encode = PromptEncoder(tok, spec.dataset)
        return [encode(apply_template(spec.dataset.prompt_template, p.prompt)) for p in ps]

    out: dict[str, Any] = {}
    for name, per, n, temp in (
        ("greedy", b.test_greedy_per_bits, 1, 0.0),
        ("sampled", b.test_sampled_per_bits, b.k, 1.0),
    ):
        probs = task.stratified("test", per)
        comps = client.generate(
            ids(probs), n=n, max_tokens=b.max_tokens, temperature=temp,
            seed=TEST_SEED + spec.training.seed,
        )  # fmt: skip
        rows = []
        for i, c in enumerate(comps):
            p = probs[i // n]
            g = graded(task, p.prompt, c.text, not c.truncated)
            rows.append((p.difficulty, g, len(c.token_ids)))
        correct = [r[1]["correct"] for r in rows]
        groups = [correct[i : i + n] for i in range(0, len(correct), n)]
        per_prompt = [statistics.fmean(g) for g in groups]
        out[name] = {
            "prompts": len(probs),
            "samples": n,
            "accuracy": statistics.fmean(correct),
            # standard error of the accuracy over prompts (the k samples of a prompt are not
            # independent draws of the test set)
            "se": statistics.stdev(per_prompt) / len(per_prompt) ** 0.5 if len(groups) > 1 else 0.0,
            "pass_at_k": statistics.fmean(any(g) for g in groups),
            "buckets": bucket_table(rows),
        }
    return out


def batch_figures(batch: Batch, tok: Any, group: int, task: Any) -> dict[str, Any]:
    """The step's batch graded by the task: all-correct / all-wrong groups, and the tokens
    of its correct completions (filler, scratch)."""
    eos = tok.eos_token_id
    gs = []
    for p_ids, c_ids in zip(batch.prompt_ids, batch.completion_ids, strict=True):
        prompt = tok.decode(p_ids, skip_special_tokens=True)
        text = tok.decode(c_ids, skip_special_tokens=True)
        gs.append(graded(task, prompt, text, bool(c_ids) and c_ids[-1] == eos))
    correct = [g["correct"] for g in gs]
    groups = [correct[i : i + group] for i in range(0, len(correct), group)]
    right = [g for g in gs if g["correct"]]

    def mean(key: str) -> float | None:
        return statistics.fmean(g[key] for g in right) if right else None

    return {
        "accuracy": statistics.fmean(correct),
        "all_correct": statistics.fmean(all(g) for g in groups),
        "all_wrong": statistics.fmean(not any(g) for g in groups),
        "reasoning_correct": mean("reasoning"),
        "filler_correct": mean("filler"),
        "scratch_correct": mean("scratch"),
        "scratch_use": statistics.fmean(g["used_scratch"] for g in gs),
    }


# --------------------------------------------------------------------------- one run
def write(path: Path, rec: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(rec) + "\n")


class Recorder(Callbacks):
    """The study's records, from the loop's callbacks: every step, every evaluation, and the
    test endpoints at the completion budget (the last step whose cumulative generated
    completions are within it: tested on the served weights before the step that crosses
    it trains)."""

    def __init__(self, job: AGPOJob, b: Budget, d: Path, servers: list[InProcessBackend]):
        self.job, self.b, self.d, self.servers = job, b, d, servers
        self.completions = 0  # training completions generated (resample rounds count)
        self.before = 0  # ... before the step being trained
        self.budget_done = False
        self.started = time.time()

    def test(self, step: int, view: str, completions: int) -> None:
        model, tok = self.servers[0].model, self.servers[0].tokenizer
        rec = {"step": step, "view": view, "completions": completions}
        write(self.d / "test.jsonl", rec | test_endpoints(model, tok, self.job, self.b))

    def on_batch(self, step: int, batch: Batch) -> None:
        assert batch.stats is not None
        spec = self.job.spec
        self.before = self.completions
        drawn = int(batch.stats.resample_rounds) + 1  # prompt batches drawn for this step
        self.completions += drawn * spec.training.prompts_per_step * spec.algorithm.group_size
        if self.completions > self.b.completions and not self.budget_done:
            # this step's rollout crossed the budget: the checkpoint is the previous step's
            self.test(step, "budget", self.before)
            self.budget_done = True

    def on_step(self, stats: StepStats, batch: Batch) -> None:
        r, u = stats.rollout, stats.update
        rec = {
            "step": stats.step,
            "completions_step": self.completions - self.before,
            "completions": self.completions,
            "reward": r.reward_mean,
            "reward_std": r.reward_std,
            "trainer_accuracy": r.accuracy,
            "zero_var": r.zero_variance_fraction,
            "resample_rounds": r.resample_rounds,
            "tokens": r.completion_tokens_mean,
            "clipped": r.completion_clipped_ratio,
            "length_reward": r.reward_component_mean.get("length"),
            "loss": u.loss,
            "ratio_mean": u.ratio_mean,
            "clip_ratio": u.clip_ratio,
            "entropy": u.entropy,
            "grad_norm": u.grad_norm,
            "seconds": stats.step_seconds,
        } | batch_figures(batch, self.servers[0].tokenizer, self.job.spec.algorithm.group_size,
                          TASKS[self.b.task])  # fmt: skip
        write(self.d / "steps.jsonl", rec)

    def on_eval(self, result: EvalStats) -> None:
        write(self.d / "eval.jsonl", {"step": result.step, "completions": self.completions,
                                      "accuracy": result.accuracy,
                                      "reasoning_tokens": result.reasoning_tokens,
                                      "prompts": result.prompts, "seconds": result.seconds})  # fmt: skip


def run_arm(arm: str, seed: int, b: Budget, out: Path) -> dict[str, Any]:
    """Train one arm x seed to ``b.steps`` steps through ``train``; test endpoints at the
    completion budget and at the end."""
    torch.set_num_threads(1)
    t0 = time.time()
    job = AGPOJob.model_validate(manifest(arm, seed, b))
    d = out / f"{arm}-s{seed}"
    d.mkdir(parents=True, exist_ok=True)
    for f in ("steps.jsonl", "eval.jsonl", "test.jsonl"):
        (d / f).unlink(missing_ok=True)
    shutil.rmtree(d / "checkpoints", ignore_errors=True)  # a fresh run, never a resume
    (d / "spec.json").write_text(json.dumps(job.model_dump(by_alias=True, mode="json"), indent=1))
    servers: list[InProcessBackend] = []
    rec = Recorder(job, b, d, servers)
    train(job, runtime(d), backend=keeping(servers), callbacks=rec)
    # never crossed: the last step is the budget checkpoint too
    rec.test(b.steps, "steps" if rec.budget_done else "budget+steps", rec.completions)
    shutil.rmtree(d / "checkpoints", ignore_errors=True)  # records only: no weights in results
    return {"arm": arm, "seed": seed, "seconds": round(time.time() - t0, 1),
            "completions": rec.completions}  # fmt: skip


def prepare_seed(seed: int, b: Budget, out: Path) -> dict[str, Any]:
    """The warm base of a seed (the trainer's warm-up, cached) and its test endpoints."""
    torch.set_num_threads(1)
    t0 = time.time()
    job = AGPOJob.model_validate(manifest("grpo", seed, b))
    d = out / f"base-s{seed}"
    d.mkdir(parents=True, exist_ok=True)
    policy = load_policy(job, d)
    rec = {"seed": seed, "step": 0, "view": "base"}
    rec |= test_endpoints(policy.module, policy.tokenizer, job, b)
    (d / "test.jsonl").write_text(json.dumps(rec) + "\n")
    return {"seed": seed, "seconds": round(time.time() - t0, 1)}
