"""``spec.evaluation``: held-out evaluation during and at the end of the run."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from agpo_api.base import ApiModel, Rule, cel_count_set, exactly_one
from agpo_api.catalog import TASKS
from agpo_api.models.common import NonNegativeInt, PositiveInt
from agpo_api.models.inputs import FileSource, HfSource

#: The shipped builtin tasks that have a held-out ``eval`` split (the default evaluation
#: source), from their catalog traits; :func:`has_eval_split` also knows tasks registered since.
TASKS_WITH_SPLITS = TASKS.having(lambda t: t.eval_split)


def has_eval_split(task: str) -> bool:
    """Whether the builtin task ``task`` has a held-out ``eval`` split."""
    return task in TASKS and TASKS.traits(task).eval_split


class EvaluationSource(ApiModel):
    """Where the evaluation prompts come from: exactly one of split, file, hf, fraction."""

    split: Literal["eval"] | None = Field(
        default=None,
        description="The builtin task's held-out split (eval; never test). The default for "
        "builtin tasks that have splits.",
    )
    file: FileSource | None = Field(
        default=None,
        description="A separate JSONL/Parquet file (same fields as the dataset); a file on a "
        "PVC is mounted read-only at /eval-data in the trainer pods.",
    )
    hf: HfSource | None = Field(
        default=None, description="A separate datasets dataset (e.g. its test split)."
    )
    fraction: float | None = Field(
        default=None,
        gt=0,
        le=0.5,
        description="Hold out this fraction of the training rows, chosen by a stable hash of "
        "the prompt text; those rows are then not trained on.",
    )

    rules = (
        Rule(
            "",
            f"{cel_count_set('split', 'file', 'hf', 'fraction')} == 1",
            "set exactly one evaluation source: split, file, hf or fraction",
            exactly_one("split", "file", "hf", "fraction"),
        ),
    )


class EvaluationSpec(ApiModel):
    """Held-out evaluation on rank 0 through the rollout servers (no second engine).

    Every evaluation reports greedy accuracy, mean@k and pass@k over ``samples`` sampled
    completions, and the mean reasoning tokens (tokens before ``answerMarker``) of correct
    greedy answers. Evaluation requests have their own seeds: they change no training batch.
    """

    every_steps: NonNegativeInt = Field(
        default=0,
        description="Evaluate before the first step and every N steps; 0 = only at the end.",
    )
    at_end: bool = Field(default=True, description="Evaluate after the last step.")
    source: EvaluationSource | None = Field(
        default=None,
        description="Where the prompts come from; default: the builtin task's eval split "
        "(bitcount). Required for other datasets.",
    )
    prompts: PositiveInt = Field(
        default=128,
        le=4096,
        description="Evaluation prompts: a fixed sample (seeded by training.seed), the same "
        "at every evaluation.",
    )
    samples: NonNegativeInt = Field(
        default=4,
        le=64,
        description="Sampled completions per prompt for mean@k and pass@k (k = samples); 0 = "
        "greedy accuracy only.",
    )
    temperature: float = Field(
        default=1.0, gt=0, le=2, description="Sampling temperature of the k samples."
    )
    answer_marker: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        default="Answer:",
        description="Reasoning tokens are the tokens before the last occurrence of this marker "
        "(or of </think>); a completion without either counts whole. Also used for the "
        "training reasoning-token metrics and lengthReward.target: reasoning. Unset: the "
        "builtin task's marker (Answer: for the shipped tasks), else Answer:.",
    )

    rules = (
        Rule(
            "atEnd",
            "self.atEnd || self.everySteps > 0 || !has(self.source)",
            "an evaluation source with atEnd false and everySteps 0 is never used: set "
            "everySteps, set atEnd, or remove the source",
            lambda s: s.at_end or s.every_steps > 0 or s.source is None,
        ),
    )

    def enabled(self) -> bool:
        """Whether any evaluation runs."""
        return self.at_end or self.every_steps > 0
