"""Rank 0's experience: draw prompts, generate ``groupSize`` completions each on the vLLM
servers, score them, compute advantages (with the zero-variance policy, and DAPO dynamic
sampling under ``zeroVariance: resample``), and pack the step's :class:`Batch`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from agpo_api.models import AGPOJobSpec, EvaluationSpec
from agpo_trainer.algorithms import Counts, compute_advantages_and_mask, count_included
from agpo_trainer.data import Example, PromptSampler, check_prompts_fit
from agpo_trainer.metrics import TrainerMetrics
from agpo_trainer.rewards.length import homogeneous_bonus
from agpo_trainer.rewards.reasoning import reasoning_lengths
from agpo_trainer.rewards.scoring import attainable_reward_range, score
from agpo_trainer.stats import RolloutStats

_ZERO_SPREAD = 1e-6  # a group whose rewards span less than this has no variance


# --------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """One step's training data for every rank (built on rank 0, broadcast to all)."""

    prompt_ids: list[list[int]]  # per completion
    completion_ids: list[list[int]]
    old_logprobs: list[list[float]]
    advantages: list[float]
    sample_mask: list[bool]
    example_indices: list[int]  # per prompt, for reproducibility checks
    stats: RolloutStats | None = None

    def __len__(self) -> int:
        return len(self.completion_ids)

    def shard(self, rank: int, world: int) -> Batch:
        """This rank's equal, contiguous slice."""
        per = len(self) // world
        sl = slice(rank * per, (rank + 1) * per)
        return Batch(
            self.prompt_ids[sl],
            self.completion_ids[sl],
            self.old_logprobs[sl],
            self.advantages[sl],
            self.sample_mask[sl],
            self.example_indices,
            self.stats,
        )

    def valid_counts(self) -> Counts:
        """(included response tokens, included sequences): the loss's global denominators."""
        return count_included([len(c) for c in self.completion_ids], self.sample_mask)


# --------------------------------------------------------------------------- pure helpers
def groups_with_variance(rewards: Tensor, g: int) -> list[int]:
    """Indices of the groups (of ``g`` completions) whose rewards are not all equal."""
    grouped = rewards.view(-1, g)
    spread = grouped.max(dim=1).values - grouped.min(dim=1).values
    return [i for i, v in enumerate(spread.tolist()) if v > _ZERO_SPREAD]


def select_groups(rewards: Tensor, group_size: int, want: int) -> list[int]:
    """DAPO dynamic sampling's choice of ``want`` groups out of everything drawn.

    Groups with reward variance come first (in draw order), then zero-variance groups fill
    the batch; the indices are returned sorted, so the batch keeps the draw order.
    """
    varied = groups_with_variance(rewards, group_size)
    taken = set(varied)
    rest = [i for i in range(rewards.numel() // group_size) if i not in taken]
    return sorted((varied + rest)[:want])


def encode_prompt(tokenizer: Any, prompt: str, system: str | None) -> list[int]:
    """Token ids of a prompt: the chat template when the tokenizer has one and the dataset a
    system prompt, else ``system`` and the prompt as plain text."""
    if getattr(tokenizer, "chat_template", None) and system is not None:
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
    text = f"{system}\n{prompt}" if system else prompt
    return list(tokenizer.encode(text, add_special_tokens=False))


def reward_terms(spec: AGPOJobSpec) -> list[tuple[str, float]]:
    """``algorithm.rewards`` as (registered name or ``module:function``, weight)."""
    return [(r.name or r.function or "", r.weight) for r in spec.algorithm.rewards]


def reward_range(spec: AGPOJobSpec) -> tuple[float, float] | None:
    """The attainable range of the summed rewards (builtin bounds, ``rewards[].bounds`` for
    custom functions): what AGPO's zero-variance rule compares with; None when unknown."""
    declared = {
        r.function: (r.bounds.min, r.bounds.max)
        for r in spec.algorithm.rewards
        if r.function is not None and r.bounds is not None
    }
    known = attainable_reward_range(reward_terms(spec), declared)
    if known is None:
        return None
    kind, coef, *_ = length_reward_args(spec)
    return known[0], known[1] + homogeneous_bonus(kind, coef, length_scope(spec))


def correct_rule(spec: AGPOJobSpec) -> tuple[str, float]:
    """``algorithm.correct`` as (the deciding reward, threshold); default accuracy > 0.5."""
    c = spec.algorithm.correct
    return (c.reward if c is not None and c.reward else "accuracy",
            c.threshold if c is not None else 0.5)  # fmt: skip


def length_reward_args(spec: AGPOJobSpec) -> tuple[str, float, int, int | None]:
    """``algorithm.lengthReward`` for :func:`score`: (type, coefficient, maxTokens, bufferTokens)
    with maxTokens defaulting to ``training.maxCompletionTokens`` and bufferTokens to a fifth of
    it (DAPO: 4096 of 20480)."""
    lr = spec.algorithm.length_reward
    if lr is None:
        return ("none", 0.0, spec.training.max_completion_tokens, None)
    max_tokens = lr.max_tokens or spec.training.max_completion_tokens
    buffer = lr.buffer_tokens
    if lr.type == "overlong" and buffer is None:
        buffer = max(1, max_tokens // 5)
    return (lr.type or "none", lr.coefficient or 0.0, max_tokens, buffer)


def length_scope(spec: AGPOJobSpec) -> str:
    """``algorithm.lengthReward.scope``: the groups AGPO's bonus applies to (default mixed)."""
    lr = spec.algorithm.length_reward
    return lr.scope if lr is not None else "mixed"


def answer_marker(spec: AGPOJobSpec) -> str:
    """``evaluation.answerMarker``, or its default when the job has no evaluation section:
    where reasoning ends, for the length reward as for evaluation."""
    return (spec.evaluation or EvaluationSpec()).answer_marker


def length_values(spec: AGPOJobSpec, tokenizer: Any, texts: list[str]) -> list[int] | None:
    """The lengths ``lengthReward.target`` measures: None for ``completion`` (the completion
    tokens :func:`score` already has), the reasoning tokens of each text for ``reasoning``."""
    lr = spec.algorithm.length_reward
    if lr is None or lr.target == "completion":
        return None
    return reasoning_lengths(tokenizer, texts, answer_marker(spec))


def rollout_seed(seed: int, step: int, round_: int) -> int:
    """A distinct, reproducible sampling seed per step and resample round."""
    return seed * 1_000_003 + step * 10_007 + round_ * 101


# --------------------------------------------------------------------------- rank 0
class Experience:
    """Rank 0's source of training batches."""

    def __init__(
        self,
        spec: AGPOJobSpec,
        *,
        tokenizer: Any,
        sampler: PromptSampler,
        client: Any,
        metrics: TrainerMetrics,
    ) -> None:
        self.spec, self.tokenizer, self.sampler = spec, tokenizer, sampler
        self.client, self.metrics = client, metrics
        # The spec refuses zeroVariance agpo when the range is unknown (a custom reward
        # without bounds); the other modes do not use it.
        known = reward_range(spec)
        if known is None and spec.algorithm.zero_variance == "agpo":
            raise ValueError(
                "zeroVariance agpo needs the attainable reward range: add bounds to every "
                "custom reward"
            )
        self.min_reward, self.max_reward = known or (0.0, 1.0)

    def collect(self, step: int) -> Batch:
        """Generate, score and compute advantages for one step's batch."""
        algo, t = self.spec.algorithm, self.spec.training
        g, want = algo.group_size, t.prompts_per_step
        examples: list[Example] = []
        completions: list[Any] = []
        start = time.perf_counter()
        rounds = 0
        while True:
            fresh = self._draw(want, examples)
            completions += self.client.generate(
                fresh,
                n=g,
                max_tokens=t.max_completion_tokens,
                temperature=t.temperature,
                top_p=t.top_p,
                seed=rollout_seed(t.seed, step, rounds),
            )
            if algo.zero_variance != "resample" or rounds >= algo.max_resample_rounds:
                break
            rewards, *_ = self._score(examples, completions)
            if len(groups_with_variance(rewards, g)) >= want:
                break
            rounds += 1
            self.metrics.resampled_prompts.inc(want)
        rollout_s = time.perf_counter() - start
        start = time.perf_counter()
        rewards, components, correct = self._score(examples, completions)
        if algo.zero_variance == "resample":
            # DAPO dynamic sampling: keep groups with variance first, then fill with the rest
            # (which the loss masks), so the batch always has promptsPerStep groups.
            order = select_groups(rewards, g, want)
            examples = [examples[i] for i in order]
            completions = [completions[i * g + j] for i in order for j in range(g)]
            idx = torch.tensor([i * g + j for i in order for j in range(g)])
            rewards, correct = rewards[idx], correct[idx]
            components = {k: v[idx] for k, v in components.items()}
        adv, mask = compute_advantages_and_mask(
            rewards,
            g,
            advantage=algo.advantage,
            zero_variance=algo.zero_variance,
            max_reward=self.max_reward,
            min_reward=self.min_reward,
            zero_variance_value=algo.zero_variance_advantage,
        )
        lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
        grouped = rewards.view(-1, g)
        zero_var = (grouped.max(dim=1).values - grouped.min(dim=1).values).abs() < _ZERO_SPREAD
        stats = RolloutStats(
            reward_mean=float(rewards.mean()),
            reward_std=float(rewards.std()) if len(rewards) > 1 else 0.0,
            accuracy=float(correct.float().mean()),
            zero_variance_fraction=float(zero_var.float().mean()),
            completion_tokens_mean=float(lengths.mean()),
            completion_clipped_ratio=sum(c.truncated for c in completions) / len(completions),
            rollout_tokens=float(lengths.sum()),
            resample_rounds=float(rounds),
            rollout_seconds=rollout_s,
            reward_seconds=time.perf_counter() - start,
            reward_components={k: float(v.mean()) for k, v in components.items()},
        )
        for n in lengths.tolist():
            self.metrics.completion_tokens.observe(n)
        return Batch(
            prompt_ids=[c.prompt_token_ids for c in completions],
            completion_ids=[c.token_ids for c in completions],
            old_logprobs=[c.logprobs for c in completions],
            advantages=adv.tolist(),
            sample_mask=mask.tolist(),
            example_indices=[e.index for e in examples],
            stats=stats,
        )

    def _draw(self, n: int, examples: list[Example]) -> list[list[int]]:
        """The next ``n`` usable prompts (too-long ones skipped and counted)."""
        fresh: list[list[int]] = []
        limit = self.spec.training.max_prompt_tokens
        system = self.spec.dataset.system_prompt
        skipped_in_a_row = 0
        while len(fresh) < n:
            for e in self.sampler.take(n - len(fresh)):
                ids = encode_prompt(self.tokenizer, e.prompt, system)
                if len(ids) > limit:
                    self.metrics.skipped_prompts.inc()
                    skipped_in_a_row += 1
                    continue
                skipped_in_a_row = 0
                fresh.append(ids)
                examples.append(e)
            # A whole epoch skipped: no prompt fits, and drawing on would spin forever.
            if skipped_in_a_row >= len(self.sampler.examples):
                check_prompts_fit(
                    self.sampler.examples,
                    lambda text: encode_prompt(self.tokenizer, text, system),
                    limit,
                )
        return fresh

    def _score(
        self, examples: list[Example], completions: list[Any]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        g = self.spec.algorithm.group_size
        texts = [self.tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
        return score(
            prompts=[examples[i // g].prompt for i in range(len(completions))],
            completions=texts,
            answers=[examples[i // g].answer for i in range(len(completions))],
            lengths=[len(c.token_ids) for c in completions],
            group_size=g,
            rewards=reward_terms(self.spec),
            length_reward=length_reward_args(self.spec),
            correct=correct_rule(self.spec),
            length_scope=length_scope(self.spec),
            length_values=length_values(self.spec, self.tokenizer, texts),
        )
