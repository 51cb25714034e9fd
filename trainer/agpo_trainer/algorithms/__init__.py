"""The group-relative family's core: advantage estimators, zero-variance policies, policy losses
(clipped, GVPO), aggregations and chunked log-probs (pure torch).

See ``docs/algorithm.md`` for the formulas, the zero-variance rule and the spec mapping.
"""

from agpo_trainer.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    ZERO_VARIANCE_MODES,
    ZERO_VARIANCE_POLICIES,
    AdvantageOptions,
    apply_zero_variance,
    compute_advantages,
    compute_advantages_and_mask,
    get_advantage_estimator,
    register_advantage_estimator,
    register_zero_variance_policy,
    zero_variance_mask,
)
from agpo_trainer.algorithms.aggregation import (
    LOSS_AGGREGATIONS,
    LOSS_DENOMINATORS,
    Counts,
    accumulate,
    aggregate_loss,
    by_sequences,
    by_tokens,
    count_included,
    get_loss_aggregation,
    get_loss_denominator,
    micro_batch_share,
    rank_loss,
    register_loss_aggregation,
)
from agpo_trainer.algorithms.logprobs import linear_token_logprobs
from agpo_trainer.algorithms.losses import (
    POLICY_LOSSES,
    PolicyLossConfig,
    PolicyLossOutput,
    compute_policy_loss,
    entropy_from_logits,
    get_policy_loss,
    gvpo_weights,
    kl_k3,
    register_policy_loss,
    token_logprobs,
)
from agpo_trainer.algorithms.registry import Registry

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "LOSS_DENOMINATORS",
    "POLICY_LOSSES",
    "ZERO_VARIANCE_MODES",
    "ZERO_VARIANCE_POLICIES",
    "AdvantageOptions",
    "Counts",
    "PolicyLossConfig",
    "PolicyLossOutput",
    "Registry",
    "accumulate",
    "aggregate_loss",
    "apply_zero_variance",
    "by_sequences",
    "by_tokens",
    "compute_advantages",
    "compute_advantages_and_mask",
    "compute_policy_loss",
    "count_included",
    "entropy_from_logits",
    "get_advantage_estimator",
    "get_loss_aggregation",
    "get_loss_denominator",
    "get_policy_loss",
    "gvpo_weights",
    "kl_k3",
    "linear_token_logprobs",
    "micro_batch_share",
    "rank_loss",
    "register_advantage_estimator",
    "register_loss_aggregation",
    "register_policy_loss",
    "register_zero_variance_policy",
    "token_logprobs",
    "zero_variance_mask",
]
