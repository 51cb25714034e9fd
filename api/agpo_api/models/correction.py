"""``spec.algorithm.rolloutCorrection``: correcting for the gap between the rollout engine's
probabilities and the trainer's (truncated or masked importance sampling)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agpo_api.base import ApiModel, Rule

#: TIS's cap C on the weight exp(trainer - rollout): TRL's default (verl and the TIS blog use
#: 2; "about 2-3").
DEFAULT_TIS_CAP = 3.0
#: MIS keeps a token (or sequence) whose weight lies in [lower, upper]: verl's 2 and 1/2.
DEFAULT_MIS_LOWER = 0.5
DEFAULT_MIS_UPPER = 2.0


class RolloutCorrectionSpec(ApiModel):
    """Correct the policy loss for the rollout engine's log-probs differing from the trainer's.

    When ``mode`` is not ``none`` the trainer recomputes the log-probs of every batch with its
    own forward pass (no gradient, once per batch, before the first update) and uses them as
    the PPO old log-probs; each token's loss is then weighted by ``w = exp(trainer - rollout)``
    truncated at ``cap`` (``tis``) or dropped where ``w`` leaves ``[lower, upper]`` (``mis``),
    per token or, with ``level: sequence``, one weight per completion (the product of its
    tokens' ratios). Default off: in float32 on CPU the gap is ~1e-7 per log-prob and the
    recomputation costs one forward pass (~30% of an update); turn ``tis`` on where the engine
    samples in bf16 (GPUs): bf16 on CPU already moved first-update ratios to 0.75-1.23.
    """

    mode: Literal["none", "tis", "mis"] = Field(
        default="none",
        description="none: vLLM's log-probs are the old log-probs; tis: truncated importance "
        "sampling, weight min(w, cap); mis: masked importance sampling, drop what leaves "
        "[lower, upper]. w = exp(trainer log-prob - rollout log-prob).",
    )
    level: Literal["token", "sequence"] = Field(
        default="token",
        description="token: a weight per token; sequence: one per completion, the product of "
        "its tokens' w.",
    )
    cap: float = Field(
        default=DEFAULT_TIS_CAP,
        ge=1,
        description="tis: the largest weight (C); TRL 3, verl 2.",
    )
    lower: float = Field(
        default=DEFAULT_MIS_LOWER,
        ge=0,
        description="mis: tokens (sequences) with w below this are dropped.",
    )
    upper: float = Field(
        default=DEFAULT_MIS_UPPER,
        gt=0,
        description="mis: tokens (sequences) with w above this are dropped.",
    )

    rules = (
        Rule(
            "upper",
            "self.upper > self.lower",
            "rolloutCorrection.upper must be greater than lower (mis keeps weights in "
            "[lower, upper]); swap them, e.g. lower: 0.5, upper: 2.0",
            lambda s: s.upper > s.lower,
        ),
    )
