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

from agpo_api.resolved import ResolvedSpec
from agpo_trainer.algorithms import Counts, advantages_of, count_included, homogeneous_groups
from agpo_trainer.data import Example, PromptSampler, check_prompts_fit
from agpo_trainer.metrics import TrainerMetrics
from agpo_trainer.prompts import PromptEncoder, scored_text
from agpo_trainer.rewards.reasoning import reasoning_lengths
from agpo_trainer.rewards.scoring import score
from agpo_trainer.stats import RolloutStats


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
    """Indices of the groups (of ``g`` completions) whose rewards are not all equal (the one
    zero-variance predicate, :func:`agpo_trainer.algorithms.homogeneous_groups`)."""
    return [i for i, same in enumerate(homogeneous_groups(rewards, g).tolist()) if not same]


def select_groups(rewards: Tensor, group_size: int, want: int) -> list[int]:
    """DAPO dynamic sampling's choice of ``want`` groups out of everything drawn.

    Groups with reward variance come first (in draw order), then zero-variance groups fill
    the batch; the indices are returned sorted, so the batch keeps the draw order.
    """
    varied = groups_with_variance(rewards, group_size)
    taken = set(varied)
    rest = [i for i in range(rewards.numel() // group_size) if i not in taken]
    return sorted((varied + rest)[:want])


def length_values(spec: ResolvedSpec, tokenizer: Any, texts: list[str]) -> list[int] | None:
    """The lengths ``lengthReward.target`` measures: None for ``completion`` (the completion
    tokens :func:`score` already has), the reasoning tokens of each text for ``reasoning``."""
    lr = spec.algorithm.length_reward
    if lr.target == "completion":
        return None
    return reasoning_lengths(tokenizer, texts, spec.algorithm.answer_marker)


def rollout_seed(seed: int, step: int, round_: int) -> int:
    """A distinct, reproducible sampling seed per step and resample round."""
    return seed * 1_000_003 + step * 10_007 + round_ * 101


# --------------------------------------------------------------------------- rank 0
class Experience:
    """Rank 0's source of training batches."""

    def __init__(
        self,
        spec: ResolvedSpec,
        *,
        tokenizer: Any,
        sampler: PromptSampler,
        client: Any,
        metrics: TrainerMetrics,
    ) -> None:
        self.spec, self.tokenizer, self.sampler = spec, tokenizer, sampler
        self.client, self.metrics = client, metrics
        self.encode = PromptEncoder(tokenizer, spec.dataset)
        # only when set: a request without stop strings stays what it was
        self.sampling = {"stop": list(spec.training.stop)} if spec.training.stop else {}

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
                **self.sampling,
            )
            if not algo.resamples or rounds >= algo.max_resample_rounds:
                break
            rewards, *_ = self._score(examples, completions)
            if len(groups_with_variance(rewards, g)) >= want:
                break
            rounds += 1
            self.metrics.add("resampled_prompts", want)
        rollout_s = time.perf_counter() - start
        start = time.perf_counter()
        rewards, components, correct, texts = self._score(examples, completions)
        if algo.resamples:
            # DAPO dynamic sampling: keep groups with variance first, then fill with the rest
            # (which the loss masks), so the batch always has promptsPerStep groups.
            order = select_groups(rewards, g, want)
            examples = [examples[i] for i in order]
            completions = [completions[i * g + j] for i in order for j in range(g)]
            idx = torch.tensor([i * g + j for i in order for j in range(g)])
            rewards, correct = rewards[idx], correct[idx]
            components = {k: v[idx] for k, v in components.items()}
            texts = [texts[i] for i in idx.tolist()]
        adv, mask = advantages_of(rewards, algo)
        lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
        zero_var = homogeneous_groups(rewards, g)
        tokens, reasoning, all_right, all_wrong = self._correct_figures(
            texts, correct.bool(), lengths
        )
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
            reward_component_mean={k: float(v.mean()) for k, v in components.items()},
            correct_completion_tokens_mean=tokens,
            correct_reasoning_tokens_mean=reasoning,
            all_correct_fraction=all_right,
            all_wrong_fraction=all_wrong,
        )
        for n in lengths.tolist():
            self.metrics.add("completion_tokens", n)
        return Batch(
            prompt_ids=[c.prompt_token_ids for c in completions],
            completion_ids=[c.token_ids for c in completions],
            old_logprobs=[c.logprobs for c in completions],
            advantages=adv.tolist(),
            sample_mask=mask.tolist(),
            example_indices=[e.index for e in examples],
            stats=stats,
        )

    def _correct_figures(
        self, texts: list[str], correct: Tensor, lengths: Tensor
    ) -> tuple[float | None, float | None, float, float]:
        """The mean completion and reasoning tokens of the correct completions (None when none
        is: what overthinking looks like per step, tokens spent on answers that were right),
        and the fractions of groups all correct and all wrong."""
        grouped = correct.view(-1, self.spec.algorithm.group_size)
        picked = correct.nonzero().flatten().tolist()
        right = [texts[i] for i in picked]  # the scored texts: decoded once, in _score
        reasoning = reasoning_lengths(self.tokenizer, right, self.spec.algorithm.answer_marker)
        return (
            float(lengths[correct].mean()) if picked else None,
            sum(reasoning) / len(picked) if picked else None,
            float(grouped.all(dim=1).float().mean()),
            float((~grouped).all(dim=1).float().mean()),
        )

    def _draw(self, n: int, examples: list[Example]) -> list[list[int]]:
        """The next ``n`` usable prompts (too-long ones skipped and counted)."""
        fresh: list[list[int]] = []
        limit = self.spec.training.max_prompt_tokens
        skipped_in_a_row = 0
        while len(fresh) < n:
            for e in self.sampler.take(n - len(fresh)):
                ids = self.encode(e.prompt)
                if len(ids) > limit:
                    self.metrics.add("skipped_prompts")
                    skipped_in_a_row += 1
                    continue
                skipped_in_a_row = 0
                fresh.append(ids)
                examples.append(e)
            # A whole epoch skipped: no prompt fits, and drawing on would spin forever.
            if skipped_in_a_row >= len(self.sampler.examples):
                check_prompts_fit(self.sampler.examples, self.encode, limit)
        return fresh

    def _score(
        self, examples: list[Example], completions: list[Any]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor, list[str]]:
        """Rewards, their components and correctness of ``completions``, and the texts they
        were scored on (decoded once here; the step statistics read them too)."""
        g = self.spec.algorithm.group_size
        stops = self.spec.training.stop
        texts = [scored_text(self.tokenizer, c.token_ids, stops) for c in completions]
        rewards, components, correct = score(
            prompts=[examples[i // g].prompt for i in range(len(completions))],
            completions=texts,
            answers=[examples[i // g].answer for i in range(len(completions))],
            lengths=[len(c.token_ids) for c in completions],
            group_size=g,
            algo=self.spec.algorithm,
            length_values=length_values(self.spec, self.tokenizer, texts),
            finished=[not c.truncated for c in completions],
        )
        return rewards, components, correct, texts
