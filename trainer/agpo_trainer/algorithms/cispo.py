"""CISPO (Clipped IS-weight Policy Optimization, MiniMax-M1, arXiv 2506.13585): REINFORCE on
every token, weighted by the token's importance ratio clipped and held constant; registered as
``algorithm.policyLoss: cispo`` (the ``cispo`` preset: no lower bound, upper 0.28).

``J = sg(clip(r_t, 1 - low, 1 + high)) * A * log pi(y_t)``, so, unlike PPO's clip, no token's
gradient is dropped: a token far outside the range still contributes, at the clipped weight.
``clip.low: 1`` makes the lower bound 0 (the paper bounds the weight only from above).

The per-token loss here is ``-sg(w_t) A log_ratio_t``, the paper's (and verl's
``compute_policy_loss_cispo``) ``-sg(w_t) A log pi_t`` minus ``-sg(w_t) A old_logp_t``, a term
with no gradient: the gradients are the same, the reported loss is 0 where the policy has not
moved. ``tests/trainer/test_verl_parity.py`` compares gradients, clip fractions and the value up
to that term with verl 0.9.1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agpo_trainer.algorithms.losses import (
    LOG_RATIO_CLAMP,
    PolicyLossConfig,
    PolicyLossOutput,
    register_policy_loss,
)


@register_policy_loss("cispo")
def cispo_loss(
    log_ratio: Tensor, advantages: Tensor, token_mask: Tensor, config: PolicyLossConfig
) -> PolicyLossOutput:
    """``loss_t = -sg(clip(r_t, 1-low, 1+high)) A log_ratio_t``; a token is counted clipped
    below (above) when its weight was raised (lowered) by the clip, whatever the sign of A.
    Shapes: ``[B, T]`` log-ratio and mask, ``[B, 1]`` advantages."""
    ratio = torch.exp(log_ratio.detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    weight = ratio.clamp(1.0 - config.clip_low, 1.0 + config.clip_high)
    loss = -weight * advantages * log_ratio
    return PolicyLossOutput(
        loss, ratio, ratio < 1.0 - config.clip_low, ratio > 1.0 + config.clip_high
    )
