"""Held-out evaluation (``spec.evaluation``), rank 0, through the rollout servers.

The prompts are a fixed seeded sample of the evaluation source (the builtin task's ``eval``
split, a separate file or ``datasets`` dataset, or a hash-chosen fraction of the training
rows that the training data then excludes: :func:`agpo_trainer.data.split_holdout`). Each
evaluation asks the servers for one greedy completion (temperature 0) and ``samples``
sampled ones per prompt, with seeds of its own: it uses neither the trainer's RNG nor the
prompt sampler, so no training batch changes. Correct = the job's ``algorithm.correct``
rule on its rewards (the training definition). Reasoning tokens = tokens before the last
answer marker (``answerMarker``, or ``</think>``) of the correct greedy answers.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from agpo_api.layout import EVAL_DATA_DIR
from agpo_api.models import DatasetSource, EvaluationSpec
from agpo_api.resolved import ResolvedSpec
from agpo_trainer.data import (
    Example,
    apply_template,
    builtin_eval_rows,
    load_examples,
    split_holdout,
)
from agpo_trainer.prompts import PromptEncoder, scored_text
from agpo_trainer.rewards.reasoning import THINK_END, reasoning_tokens
from agpo_trainer.rewards.scoring import judge
from agpo_trainer.stats import EvalStats

log = logging.getLogger("agpo_trainer")

__all__ = ["THINK_END", "Evaluator", "evaluation_sets", "pick", "reasoning_tokens"]

#: Evaluation seeds live far from the rollout seeds (``experience.rollout_seed``).
EVAL_SEED_OFFSET = 987_654_321


def evaluation_sets(
    spec: ResolvedSpec,
    examples: list[Example],
    base_dir: Any = None,
    *,
    dataset_path: str | None = None,
) -> tuple[list[Example], list[Example]]:
    """(training examples, evaluation examples): the training rows without the held-out ones
    (``source.fraction``), and the fixed evaluation sample (empty: no evaluation)."""
    ev = spec.evaluation
    if ev is None:
        return examples, []
    src, ds = ev.source, spec.dataset
    held: list[Example]
    if src is None or src.split is not None:
        assert ds.source.builtin is not None  # the spec's rule
        rows = builtin_eval_rows(ds.source.builtin, ev.prompts)
        held = [
            Example(i, apply_template(ds.prompt_template, r["prompt"]), r["answer"])
            for i, r in enumerate(rows)
        ]
    elif src.fraction is not None:
        examples, held = split_holdout(examples, src.fraction)
    else:
        other = ds.model_copy(update={"source": DatasetSource(file=src.file, hf=src.hf)})
        held = load_examples(other, base_dir, dataset_path=eval_file_in_pod(src))
    return examples, pick(held, ev.prompts, spec.training.seed)


def eval_file_in_pod(src: Any) -> str | None:
    """Where the operator mounted an evaluation file's PVC (``layout.EVAL_DATA_DIR``); None
    for every other source."""
    file = src.file
    if file is None or not file.pvc:
        return None
    return f"{EVAL_DATA_DIR}/{(file.sub_path or '').strip('/')}"


def pick(examples: list[Example], n: int, seed: int) -> list[Example]:
    """A fixed sample of ``n`` examples (all when fewer), in dataset order; seeded by its own
    generator (the trainer's RNG is not touched)."""
    if len(examples) <= n:
        return list(examples)
    chosen = random.Random(seed + EVAL_SEED_OFFSET).sample(range(len(examples)), n)
    return [examples[i] for i in sorted(chosen)]


class Evaluator:
    """Rank 0's evaluation of the served policy on a fixed prompt set."""

    def __init__(
        self, spec: ResolvedSpec, ev: EvaluationSpec, *, tokenizer: Any, client: Any,
        examples: list[Example],
    ) -> None:  # fmt: skip
        self.spec, self.ev, self.tokenizer, self.client = spec, ev, tokenizer, client
        encode, limit = PromptEncoder(tokenizer, spec.dataset), spec.training.max_prompt_tokens
        encoded = [(e, encode(e.prompt)) for e in examples]
        kept = [(e, ids) for e, ids in encoded if len(ids) <= limit]
        if len(kept) < len(encoded):
            log.warning(
                "evaluation: %d of %d prompts exceed maxPromptTokens and are left out",
                len(encoded) - len(kept), len(encoded),
            )  # fmt: skip
        self.examples = [e for e, _ in kept]
        self.prompt_ids = [ids for _, ids in kept]

    def due(self, step: int, total_steps: int) -> bool:
        """Whether to evaluate after ``step`` (0 = before the first step)."""
        every = self.ev.every_steps
        if not self.examples:
            return False
        if every and step % every == 0:
            return True
        return self.ev.at_end and step == total_steps

    def run(self, step: int, policy_version: int) -> EvalStats:
        """Greedy and ``samples`` sampled completions per prompt; the figures."""
        start = time.perf_counter()
        k = self.ev.samples
        seed = self.spec.training.seed + EVAL_SEED_OFFSET
        greedy = self._generate(1, 0.0, seed)
        g_texts, g_right = self._correct(greedy, 1)
        marker = self.spec.algorithm.answer_marker  # the resolved one (the task's by default)
        lengths = [
            reasoning_tokens(self.tokenizer, text, marker)
            for text, right in zip(g_texts, g_right, strict=True)
            if right
        ]
        mean_at_k = pass_at_k = None
        if k:
            sampled = self._generate(k, self.ev.temperature, seed + 1)
            _, s_right = self._correct(sampled, k)
            mean_at_k = sum(s_right) / len(s_right)
            groups = [s_right[i : i + k] for i in range(0, len(s_right), k)]
            pass_at_k = sum(any(g) for g in groups) / len(groups)
        return EvalStats(
            step=step,
            policy_version=policy_version,
            prompts=len(self.examples),
            accuracy=sum(g_right) / len(g_right),
            samples=k,
            mean_at_k=mean_at_k,
            pass_at_k=pass_at_k,
            reasoning_tokens=sum(lengths) / len(lengths) if lengths else None,
            seconds=time.perf_counter() - start,
        )

    def _generate(self, n: int, temperature: float, seed: int) -> list[Any]:
        """``n`` completions per prompt, in chunks of at most a training batch's sequences
        (``promptsPerStep x groupSize``) in flight: evaluation puts no more load on the
        servers than a rollout does. Prompt ``i`` gets seed ``seed + i * n`` whatever the
        chunking."""
        t = self.spec.training
        per = max(1, (t.prompts_per_step * self.spec.algorithm.group_size) // n)
        out: list[Any] = []
        for start in range(0, len(self.prompt_ids), per):
            out += self.client.generate(
                self.prompt_ids[start : start + per], n=n, max_tokens=t.max_completion_tokens,
                temperature=temperature, top_p=1.0, seed=seed + start * n,
                **({"stop": list(t.stop)} if t.stop else {}),
            )  # fmt: skip
        return out

    def _correct(self, completions: list[Any], n: int) -> tuple[list[str], list[bool]]:
        """Scored texts and correctness (``algorithm.correct``; a truncated one is wrong: the
        training reward's rule, :func:`agpo_trainer.rewards.scoring.judge`)."""
        stops = self.spec.training.stop
        texts = [scored_text(self.tokenizer, c.token_ids, stops) for c in completions]
        _, correct = judge(
            [self.examples[i // n].prompt for i in range(len(completions))],
            texts,
            [self.examples[i // n].answer for i in range(len(completions))],
            self.spec.algorithm,
            finished=[not c.truncated for c in completions],
        )
        return texts, [bool(x) for x in correct.tolist()]
