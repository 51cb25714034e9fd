"""One arm x seed of the study through the trainer's own code, with in-process generation.

What runs is ``agpo_trainer.train``'s loop minus the rollout servers: the job's data
(``load_examples``, ``evaluation_sets``, ``PromptSampler``), ``Policy.load`` (builtin:tiny),
``format_warmup`` (the bitcount warm-up, cached in ``AGPO_CACHE_DIR/warmup`` and shared with
`agpo run`), ``Experience.collect`` (scoring, length reward, advantages, zero-variance
policy, DAPO resampling), ``train_step`` (policy loss, clip, optimizer, LR schedule) and the
``Evaluator``. Only the client is :class:`sampling.LocalRollout` (it samples the live module,
so there is no weight push).

Records (JSONL, one object a line) go to ``<out>/<arm>-s<seed>/``: ``steps.jsonl`` (per RL
step), ``eval.jsonl`` (periodic greedy eval on the eval split), ``test.jsonl`` (test
endpoints at the budget checkpoint and at the last step), ``spec.json`` (the resolved job).
"""

from __future__ import annotations

import copy
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from arms import Budget, manifest
from sampling import LocalRollout

from agpo_api.models import AGPOJob
from agpo_trainer.data import PromptSampler, apply_template, load_examples
from agpo_trainer.evaluation import Evaluator, evaluation_sets
from agpo_trainer.experience import Batch, Experience, encode_prompt
from agpo_trainer.metrics import TrainerMetrics
from agpo_trainer.policy import Policy
from agpo_trainer.runtime import MICRO_BATCH_SIZE, Runtime
from agpo_trainer.tasks import bitcount as task
from agpo_trainer.update import train_step
from agpo_trainer.warmup import format_warmup

TEST_SEED = 31_337  # sampling seed of the mean@k set (per seed, the same in every arm)


def cache_dir() -> Path:
    return Path(os.environ.get("AGPO_CACHE_DIR", Path.home() / ".cache" / "agpo"))


def runtime(workdir: Path) -> Runtime:
    return Runtime(
        rank=0,
        world_size=1,
        local_rank=0,
        rollout_urls=[],
        rollout_token=None,
        checkpoint_dir=workdir / "checkpoints",
        metrics_port=None,
        weight_sync_host=None,
        weight_sync_port=0,
        cache_dir=cache_dir(),
        base_dir=None,
    )


def load_policy(job: AGPOJob, workdir: Path) -> tuple[Policy, list[Any], list[Any]]:
    """As ``train.train`` does: seeds, data, the policy, the warm-up."""
    spec, t = job.spec, job.spec.training
    random.seed(t.seed)
    torch.manual_seed(t.seed)
    examples = load_examples(spec.dataset, None)
    examples, eval_examples = evaluation_sets(spec, examples, None)
    policy = Policy.load(spec, runtime(workdir))
    if t.format_warmup_steps:
        format_warmup(policy, examples, spec, t.format_warmup_steps)
    return policy, examples, eval_examples


# --------------------------------------------------------------------------- grading
def graded(prompt: str, text: str, finished: bool) -> dict[str, Any]:
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
    spec = job.spec
    client = LocalRollout(model, tok)

    def ids(ps: list[task.Problem]) -> list[list[int]]:
        template, system = spec.dataset.prompt_template, spec.dataset.system_prompt
        return [encode_prompt(tok, apply_template(template, p.prompt), system) for p in ps]

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
            rows.append((p.difficulty, graded(p.prompt, c.text, not c.truncated), len(c.token_ids)))
        correct = [r[1]["correct"] for r in rows]
        groups = [correct[i : i + n] for i in range(0, len(correct), n)]
        out[name] = {
            "prompts": len(probs),
            "samples": n,
            "accuracy": statistics.fmean(correct),
            "pass_at_k": statistics.fmean(any(g) for g in groups),
            "buckets": bucket_table(rows),
        }
    return out


def batch_figures(batch: Batch, tok: Any, group: int) -> dict[str, Any]:
    """The step's batch graded by the task: all-correct / all-wrong groups, and the tokens
    of its correct completions (filler, scratch)."""
    eos = tok.eos_token_id
    gs = []
    for p_ids, c_ids in zip(batch.prompt_ids, batch.completion_ids, strict=True):
        prompt = tok.decode(p_ids, skip_special_tokens=True)
        text = tok.decode(c_ids, skip_special_tokens=True)
        gs.append(graded(prompt, text, bool(c_ids) and c_ids[-1] == eos))
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


def run_arm(arm: str, seed: int, b: Budget, out: Path) -> dict[str, Any]:
    """Train one arm x seed to ``b.steps`` steps; test endpoints at the completion budget
    (the last step whose cumulative generated completions are within it) and at the end."""
    torch.set_num_threads(1)
    t0 = time.time()
    job = AGPOJob.model_validate(manifest(arm, seed, b))
    spec = job.spec
    d = out / f"{arm}-s{seed}"
    d.mkdir(parents=True, exist_ok=True)
    for f in ("steps.jsonl", "eval.jsonl", "test.jsonl"):
        (d / f).unlink(missing_ok=True)
    (d / "spec.json").write_text(json.dumps(job.model_dump(by_alias=True, mode="json"), indent=1))
    policy, examples, eval_examples = load_policy(job, d)
    tok, model = policy.tokenizer, policy.module
    sampler = PromptSampler(examples, spec.training.seed)
    client = LocalRollout(model, tok)
    experience = Experience(
        spec, tokenizer=tok, sampler=sampler, client=client, metrics=TrainerMetrics()
    )
    ev = spec.effective_evaluation()
    assert ev is not None
    evaluator = Evaluator(
        spec, ev, tokenizer=tok, client=LocalRollout(model, tok), examples=eval_examples
    )

    def evaluate(step: int) -> None:
        r = evaluator.run(step, step)
        write(d / "eval.jsonl", {"step": step, "completions": client.generated,
                                 "accuracy": r.accuracy, "reasoning_tokens": r.reasoning_tokens,
                                 "prompts": r.prompts, "seconds": r.seconds})  # fmt: skip

    def test(step: int, view: str, m: Any) -> None:
        rec = {"step": step, "view": view, "completions": client.generated if m is model else
               prev_generated} | test_endpoints(m, tok, job, b)  # fmt: skip
        write(d / "test.jsonl", rec)

    evaluate(0)
    budget_done = False
    prev_state = copy.deepcopy(model.state_dict())
    prev_generated = 0
    for step in range(1, b.steps + 1):
        s0, before = time.time(), client.generated
        batch = experience.collect(step - 1)
        if client.generated > b.completions and not budget_done:
            # this step's rollout crossed the budget: the checkpoint is the previous step's
            frozen = copy.deepcopy(model)
            frozen.load_state_dict(prev_state)
            test(step - 1, "budget", frozen)
            budget_done = True
        update = train_step(policy, batch, spec, rank=0, world_size=1, micro=MICRO_BATCH_SIZE)
        stats = batch.stats
        assert stats is not None
        rec = {
            "step": step,
            "completions_step": client.generated - before,
            "completions": client.generated,
            "reward": stats.reward_mean,
            "reward_std": stats.reward_std,
            "trainer_accuracy": stats.accuracy,
            "zero_var": stats.zero_variance_fraction,
            "resample_rounds": stats.resample_rounds,
            "tokens": stats.completion_tokens_mean,
            "clipped": stats.completion_clipped_ratio,
            "length_reward": stats.reward_components.get("length"),
            "loss": update.loss,
            "ratio_mean": update.ratio_mean,
            "clip_ratio": update.clip_ratio,
            "entropy": update.entropy,
            "grad_norm": update.grad_norm,
            "seconds": time.time() - s0,
        } | batch_figures(batch, tok, spec.algorithm.group_size)
        write(d / "steps.jsonl", rec)
        prev_state = copy.deepcopy(model.state_dict())
        prev_generated = client.generated
        if step % b.eval_every == 0 or step == b.steps:
            evaluate(step)
    if not budget_done:  # never crossed: the last step is the budget checkpoint too
        test(b.steps, "budget+steps", model)
    else:
        test(b.steps, "steps", model)
    return {"arm": arm, "seed": seed, "seconds": round(time.time() - t0, 1),
            "completions": client.generated}  # fmt: skip


def prepare_seed(seed: int, b: Budget, out: Path) -> dict[str, Any]:
    """The warm base of a seed (the trainer's warm-up, cached) and its test endpoints."""
    torch.set_num_threads(1)
    t0 = time.time()
    job = AGPOJob.model_validate(manifest("grpo", seed, b))
    d = out / f"base-s{seed}"
    d.mkdir(parents=True, exist_ok=True)
    policy, _, _ = load_policy(job, d)
    rec = {"seed": seed, "step": 0, "view": "base"}
    rec |= test_endpoints(policy.module, policy.tokenizer, job, b)
    (d / "test.jsonl").write_text(json.dumps(rec) + "\n")
    return {"seed": seed, "seconds": round(time.time() - t0, 1)}
