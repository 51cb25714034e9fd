"""The group-relative family's core: advantage estimators, zero-variance policies, policy losses
(clipped, GSPO, CISPO, GVPO), aggregations and chunked log-probs (pure torch).

Every kind of part is a :class:`Registry` tied to its catalog in ``agpo_api.catalog`` (the
names a spec may use and their traits). See ``docs/algorithm.md`` for the formulas, the
zero-variance rule and the spec mapping, and ``docs/architecture.md`` for adding a part.
"""

from agpo_trainer.algorithms import cispo as _cispo  # noqa: F401  (registers policyLoss cispo)
from agpo_trainer.algorithms import gspo as _gspo  # noqa: F401  (registers policyLoss gspo)
from agpo_trainer.algorithms import gvpo as _gvpo  # noqa: F401  (registers policyLoss gvpo)
from agpo_trainer.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageOptions,
    compute_advantages,
    get_advantage_estimator,
    homogeneous_groups,
    register_advantage_estimator,
)
from agpo_trainer.algorithms.aggregation import (
    DENOMINATORS,
    LOSS_AGGREGATIONS,
    Counts,
    accumulate,
    count_included,
    get_loss_aggregation,
    masks,
    micro_batch_share,
    rank_loss,
    register_loss_aggregation,
)
from agpo_trainer.algorithms.gvpo import gvpo_weights
from agpo_trainer.algorithms.logprobs import (
    entropy_from_logits,
    linear_token_logprobs,
    token_logprobs,
)
from agpo_trainer.algorithms.losses import (
    POLICY_LOSSES,
    PolicyLossConfig,
    PolicyLossOutput,
    compute_policy_loss,
    get_policy_loss,
    k3,
    register_policy_loss,
)
from agpo_trainer.algorithms.zero_variance import (
    ZERO_VARIANCE_POLICIES,
    advantages_of,
    apply_zero_variance,
    compute_advantages_and_mask,
    register_zero_variance_policy,
)
from agpo_trainer.registry import Entry, Registry

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "DENOMINATORS",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSSES",
    "ZERO_VARIANCE_POLICIES",
    "AdvantageOptions",
    "Counts",
    "Entry",
    "PolicyLossConfig",
    "PolicyLossOutput",
    "Registry",
    "accumulate",
    "advantages_of",
    "apply_zero_variance",
    "compute_advantages",
    "compute_advantages_and_mask",
    "compute_policy_loss",
    "count_included",
    "entropy_from_logits",
    "get_advantage_estimator",
    "get_loss_aggregation",
    "get_policy_loss",
    "gvpo_weights",
    "homogeneous_groups",
    "k3",
    "linear_token_logprobs",
    "masks",
    "micro_batch_share",
    "rank_loss",
    "register_advantage_estimator",
    "register_loss_aggregation",
    "register_policy_loss",
    "register_zero_variance_policy",
    "token_logprobs",
]
