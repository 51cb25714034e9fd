"""GSPO (Group Sequence Policy Optimization, Qwen3, arXiv 2507.18071): the importance ratio of a
whole completion, length-normalised, clipped per sequence; registered as
``algorithm.policyLoss: gspo`` (the ``gspo`` preset adds the paper's clip range 3e-4 / 4e-4).

``s_i = exp(mean_t (logp_it - old_logp_it))`` (the geometric mean of the token ratios), and the
objective ``min(s_i A_i, clip(s_i, 1 - low, 1 + high) A_i)``. Written per token in the
"GSPO-token" form of the paper (section 4.3) and of verl's ``compute_policy_loss_gspo``:
``s_it = sg[s_i] * p_it / sg[p_it]``, whose value is ``s_i`` on every token of the completion
and whose gradient, with one advantage per completion, is GSPO's. The log of ``s_it`` is
clamped at 10 before ``exp`` as verl does. ``tests/trainer/test_verl_parity.py`` holds it to
verl 0.9.1 on random inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agpo_trainer.algorithms.losses import (
    PolicyLossConfig,
    PolicyLossOutput,
    clipped_surrogate,
    register_policy_loss,
)

#: verl clamps the sequence log-ratio from above before exp().
SEQUENCE_LOG_RATIO_MAX = 10.0


def sequence_log_ratio(log_ratio: Tensor, token_mask: Tensor) -> Tensor:
    """``log s_i``: the mean log-ratio over each row's counted tokens, ``[B, 1]`` (0 for a row
    with none)."""
    counted = (token_mask > 0).to(log_ratio.dtype)
    return (log_ratio * counted).sum(-1, keepdim=True) / counted.sum(-1, keepdim=True).clamp(
        min=1.0
    )


@register_policy_loss("gspo")
def gspo_loss(
    log_ratio: Tensor, advantages: Tensor, token_mask: Tensor, config: PolicyLossConfig
) -> PolicyLossOutput:
    """GSPO-token: ``loss_it = -min(s_it A_i, clip(s_it, 1-low, 1+high) A_i)`` with
    ``s_it = sg[s_i] p_it / sg[p_it]``. Shapes: ``[B, T]`` log-ratio and mask, ``[B, 1]``
    advantages; the reported ratio is ``s_i`` on every token of row ``i``."""
    seq = sequence_log_ratio(log_ratio, token_mask).detach()
    log_s = (log_ratio - log_ratio.detach() + seq).clamp(max=SEQUENCE_LOG_RATIO_MAX)
    return clipped_surrogate(torch.exp(log_s), advantages, config.clip_low, config.clip_high)
