"""``spec.algorithm``: the length reward, the clip range, the estimator, the zero-variance policy,
the policy loss and the rollout correction (the rewards are in :mod:`agpo_api.models.rewards`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from agpo_api.base import ApiModel, Rule
from agpo_api.catalog import ADVANTAGES, POLICY_LOSSES, ZERO_VARIANCE, aggregations_for, cel_list
from agpo_api.models.common import PositiveInt
from agpo_api.models.correction import RolloutCorrectionSpec
from agpo_api.models.presets import (
    AdvantageName,
    LengthRewardName,
    LossAggregationName,
    PolicyLossName,
    PresetName,
    ZeroVarianceName,
    cel_effective,
    default_coefficient,
    resolve_algorithm,
)
from agpo_api.models.rewards import CorrectSpec, RewardSpec

#: GVPO's beta (``gvpoBeta``; arXiv 2504.19599).
DEFAULT_GVPO_BETA = 0.1
#: AGPO's advantage magnitude for zero-variance groups (``zeroVarianceAdvantage``).
DEFAULT_ZERO_VARIANCE_ADVANTAGE = 1.0


class LengthRewardSpec(ApiModel):
    """Length shaping: AGPO's reward for short correct answers, Kimi k1.5's, or DAPO's penalty."""

    type: LengthRewardName | None = Field(
        default=None,
        description="agpo: coef*(1-(L-Lmin)/(Lmax-Lmin)) for correct answers in mixed groups; "
        "kimi: Kimi k1.5 length penalty; overlong: DAPO soft overlong penalty; none: off. "
        "Default: the preset's.",
    )
    coefficient: float | None = Field(
        default=None,
        ge=0,
        description="Scale of the length term; default the preset's, or for another type "
        "agpo 0.1, kimi 1, overlong 1.",
    )
    max_tokens: PositiveInt | None = Field(
        default=None,
        description="overlong: hard limit L_max; default training.maxCompletionTokens.",
    )
    buffer_tokens: PositiveInt | None = Field(
        default=None,
        description="overlong: the penalty ramps over the last bufferTokens tokens; default a "
        "fifth of maxTokens (DAPO: 4096 of 20480).",
    )
    scope: Literal["mixed", "all"] = Field(
        default="mixed",
        description="agpo: which groups get the bonus. mixed: correct answers of mixed groups "
        "only (the paper); all: also all-correct groups, where AGPO's +1 advantage otherwise "
        "puts no pressure on length.",
    )
    target: Literal["completion", "reasoning"] = Field(
        default="completion",
        description="The length that is rewarded: every completion token, or only the "
        "reasoning tokens before evaluation.answerMarker (or </think>).",
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            kind = data.setdefault("type", "none")
            if data.get("coefficient") is None and isinstance(kind, str):
                data["coefficient"] = default_coefficient(kind)
        return data

    rules = (
        Rule(
            "bufferTokens",
            "!has(self.bufferTokens) || !has(self.maxTokens) || self.bufferTokens < self.maxTokens",
            "bufferTokens must be smaller than maxTokens",
            lambda s: (
                s.buffer_tokens is None or s.max_tokens is None or s.buffer_tokens < s.max_tokens
            ),
        ),
    )


class ClipSpec(ApiModel):
    """PPO ratio clip range [1 - low, 1 + high] (DAPO's clip-higher when high > low)."""

    low: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Lower clip epsilon (1: no lower bound); default the preset's.",
    )
    high: float | None = Field(
        default=None, gt=0, description="Upper clip epsilon; default the preset's."
    )

    rules = (
        Rule(
            "high",
            # low 1 is "no lower bound" (CISPO's weights), not a range to compare
            "!has(self.low) || !has(self.high) || self.high >= self.low || self.low == 1.0",
            "clip.high must be >= clip.low (or clip.low 1: no lower bound); raise clip.high or "
            "lower clip.low",
            lambda s: s.low is None or s.high is None or s.high >= s.low or s.low == 1.0,
        ),
    )


def _default_rewards() -> list[RewardSpec]:
    return [RewardSpec(name="accuracy", weight=1.0)]


_S = "self"
_ZV = cel_effective(_S, "zeroVariance")
_LOSS = cel_effective(_S, "policyLoss")
_AGG = cel_effective(_S, "lossAggregation")
_ADV = cel_effective(_S, "advantage")
# The CRD's rules are written over the shipped parts' traits (agpo_api.catalog), never a name.
_RANGE_ZV = ZERO_VARIANCE.having(lambda t: t.uses_reward_range)
_RANGE_ADV = ADVANTAGES.having(lambda t: t.uses_reward_range)
_OWN_AGGREGATION = POLICY_LOSSES.having(lambda t: t.aggregation is not None)
_NO_RATIO = POLICY_LOSSES.having(lambda t: not t.ratio)
_USES_RANGE = " || ".join(
    f"{field} in {cel_list(names)}"
    for field, names in ((_ZV, _RANGE_ZV), (_ADV, _RANGE_ADV))
    if names
)


class AlgorithmSpec(ApiModel):
    """The RL objective: a named preset, or its fields one by one (each overrides the preset).

    One knob per concept: ``advantage`` normalises groups with reward variance,
    ``zeroVariance`` alone decides groups without, ``policyLoss`` is the loss, and
    ``lossAggregation`` how token losses are averaged. ``agpo validate`` and ``agpo render``
    show the resolved fields.
    """

    preset: PresetName | None = Field(
        default=None,
        description="agpo | grpo | dr_grpo | dapo | reinforce_rej | gvpo | gspo | cispo: "
        "expands to advantage, zeroVariance, policyLoss, lossAggregation, clip, lengthReward and klCoefficient "
        "(docs/algorithm.md); fields set here override it. Unset: agpo, or grpo when one of "
        "advantage, zeroVariance, policyLoss is set.",
    )
    advantage: AdvantageName | None = Field(
        default=None,
        description="Groups with reward variance: grpo (r-mean)/(std+eps); dr_grpo r-mean; "
        "reinforce r. Default: the preset's.",
    )
    zero_variance: ZeroVarianceName | None = Field(
        default=None,
        description="Groups whose rewards are all equal: agpo: +-zeroVarianceAdvantage at the "
        "top/bottom of the reward range; mask: left out of the loss; resample: draw more prompts "
        "(DAPO); keep: advantage 0. Default: the preset's.",
    )
    policy_loss: PolicyLossName | None = Field(
        default=None,
        description="clipped: token-level clipped surrogate (PPO/DAPO clip); gspo: GSPO's "
        "length-normalised sequence ratio, clipped per sequence (arXiv 2507.18071); cispo: "
        "REINFORCE weighted by the clipped, stop-gradient token ratio (MiniMax-M1, arXiv "
        "2506.13585); gvpo: GVPO (arXiv 2504.19599; no ratio, no clip). Default: the preset's.",
    )
    gvpo_beta: float = Field(
        default=DEFAULT_GVPO_BETA,
        gt=0,
        description="policyLoss gvpo: beta of GVPO's implied reward.",
    )
    zero_variance_advantage: float = Field(
        default=DEFAULT_ZERO_VARIANCE_ADVANTAGE,
        gt=0,
        description="Magnitude of AGPO's advantage for zero-variance groups.",
    )
    max_resample_rounds: PositiveInt = Field(
        default=4, description="zeroVariance resample: extra prompt batches drawn at most per step."
    )
    group_size: int = Field(default=8, ge=2, le=1024, description="Completions per prompt (G).")
    rewards: list[RewardSpec] = Field(
        default_factory=_default_rewards,
        min_length=1,
        max_length=16,
        description="Reward terms, summed with their weights.",
    )
    correct: CorrectSpec | None = Field(
        default=None,
        description="What counts as a correct answer (length rewards, accuracy metric); "
        "default: accuracy above 0.5.",
    )
    length_reward: LengthRewardSpec | None = Field(
        default=None, description="Length shaping; default: the preset's."
    )
    clip: ClipSpec | None = Field(
        default=None, description="Ratio clip range (policyLoss clipped); default the preset's."
    )
    kl_coefficient: float | None = Field(
        default=None,
        ge=0,
        description="k3 KL penalty to the initial policy; 0 = no reference model. Default: the "
        "preset's.",
    )
    loss_aggregation: LossAggregationName | None = Field(
        default=None,
        description="token-mean (DAPO, AGPO), seq-mean-token-mean (GRPO), seq-mean-token-sum "
        "(GVPO), seq-mean-token-sum-norm (Dr. GRPO). Default: the preset's.",
    )

    rollout_correction: RolloutCorrectionSpec = Field(
        default_factory=RolloutCorrectionSpec,
        description="Correction for the rollout engine's log-probs differing from the trainer's "
        "(TIS / MIS); default off.",
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        return resolve_algorithm(data) if isinstance(data, dict) else data

    def needs_whole_groups(self) -> bool:
        """Whether the policy loss needs all responses of a prompt in one gradient step."""
        return bool(self.policy_loss and POLICY_LOSSES.traits(self.policy_loss).whole_groups)

    def uses_reward_range(self) -> bool:
        """Whether the estimator or the zero-variance policy reads the attainable reward range
        (their catalog traits), so every reward must have known bounds."""
        return bool(
            (self.zero_variance and ZERO_VARIANCE.traits(self.zero_variance).uses_reward_range)
            or (self.advantage and ADVANTAGES.traits(self.advantage).uses_reward_range)
        )

    rules = (
        Rule(
            "rewards",
            f"!({_USES_RANGE}) || self.rewards.all(r, has(r.name) || has(r.bounds))",
            "zeroVariance agpo gives a homogeneous group +-zeroVarianceAdvantage at the top or "
            "bottom of the attainable reward range, which a custom function does not declare: "
            "add bounds: {min: ..., max: ...} to each rewards[] entry with a function, or choose "
            "zeroVariance mask, resample or keep",
            lambda s: (
                not s.uses_reward_range()
                or all(r.name is not None or r.bounds is not None for r in s.rewards)
            ),
        ),
        Rule(
            "correct.reward",
            "(has(self.correct) && has(self.correct.reward)) || "
            "self.rewards.all(r, has(r.name)) || "
            "self.rewards.exists(r, has(r.name) && r.name == 'accuracy')",
            "the rewards are custom functions only: say what a correct answer is with "
            "correct: {reward: <one of the rewards' function>, threshold: ...}, or "
            "correct: {reward: accuracy} for math answers",
            lambda s: s.correct is not None and s.correct.reward is not None,
        ),
        Rule(
            "correct.reward",
            "!has(self.correct) || !has(self.correct.reward) || "
            "self.correct.reward == 'accuracy' || self.rewards.exists(r, "
            "(has(r.name) && r.name == self.correct.reward) || "
            "(has(r.__function__) && r.__function__ == self.correct.reward))",
            "correct.reward must be accuracy or the name or function of one of algorithm.rewards",
            lambda s: (
                s.correct is None
                or s.correct.reward in (None, "accuracy")
                or any(s.correct.reward in (r.name, r.function) for r in s.rewards)
            ),
        ),
        Rule(
            "lossAggregation",
            " && ".join(
                f"({_LOSS} != '{loss}' || {_AGG} == '{aggregations_for(loss)[0]}')"
                for loss in _OWN_AGGREGATION
            ),
            "policyLoss gvpo is written in per-sequence log-probability sums: set "
            "lossAggregation: seq-mean-token-sum (or leave it to preset: gvpo)",
            lambda s: (
                s.policy_loss is None or s.loss_aggregation in aggregations_for(s.policy_loss)
            ),
        ),
        Rule(
            "rolloutCorrection",
            f"self.rolloutCorrection.mode == 'none' || !({_LOSS} in {cel_list(_NO_RATIO)})",
            f"policyLoss {' or '.join(_NO_RATIO)} has no importance ratio for "
            "rolloutCorrection to correct: set rolloutCorrection.mode: none, or choose policyLoss "
            f"{' or '.join(n for n in POLICY_LOSSES.names() if n not in _NO_RATIO)}",
            lambda s: (
                s.rollout_correction.mode == "none"
                or s.policy_loss is None
                or POLICY_LOSSES.traits(s.policy_loss).ratio
            ),
        ),
    )
