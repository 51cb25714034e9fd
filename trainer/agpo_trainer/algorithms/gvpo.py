"""GVPO (Group Variance Policy Optimization, arXiv 2504.19599): a policy loss with no ratio and
no clip, registered as ``algorithm.policyLoss: gvpo``.

Per group of ``k`` responses, ``w_i = A_i - beta * (D_i - mean_g D)`` with
``D_i = sum_t (logp_t - old_logp_t)`` and ``A_i`` the centred reward (``advantage: dr_grpo``),
and the loss ``-beta * sum_i w_i * D_i / (k - 1)`` with ``w`` held constant; its gradient is
that of the paper's ``1/2 sum_i [beta (D_i - mean D) - A_i]^2 / (k - 1)`` (see
:func:`gvpo_loss`). Its catalog traits (``agpo_api.catalog``) say it needs whole groups in a
micro-batch and the ``seq-mean-token-sum`` aggregation; nothing else in the trainer names it.
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


def gvpo_weights(
    log_ratio: Tensor, advantages: Tensor, token_mask: Tensor, beta: float, group_size: int
) -> tuple[Tensor, Tensor]:
    """GVPO's per-response weights and log-ratio sums (arXiv 2504.19599).

    ``D_i = sum_t m_it (logp_it - old_logp_it)`` and ``w_i = A_i - beta * (D_i - mean_g D)``,
    the mean over the ``G`` responses of ``i``'s group (rows ``[g*G:(g+1)*G]``).

    Args:
        log_ratio: ``Tensor[B, T]``; token_mask: ``Tensor[B, T]`` (float); advantages ``[B, 1]``
            (the centred rewards ``R_i - mean R`` for the paper's objective).
        beta: GVPO's beta; group_size: ``G`` (``B % G == 0``).

    Returns:
        ``(w Tensor[B], D Tensor[B])``; ``w`` is detached (a constant of the loss), ``D`` is not.
    """
    b = log_ratio.shape[0]
    if group_size < 2 or b % group_size != 0:
        raise ValueError(
            f"gvpo needs whole groups of size >= 2: {b} rows, group_size={group_size} (all "
            f"responses of a prompt must be in the same micro-batch)"
        )
    d = (log_ratio * token_mask).sum(dim=-1)
    dg = d.detach().view(-1, group_size)
    centred = (dg - dg.mean(dim=-1, keepdim=True)).reshape(-1)
    w = advantages.detach().reshape(-1) - beta * centred
    return w, d


@register_policy_loss("gvpo")
def gvpo_loss(
    log_ratio: Tensor, advantages: Tensor, token_mask: Tensor, config: PolicyLossConfig
) -> PolicyLossOutput:
    """GVPO (Group Variance Policy Optimization, arXiv 2504.19599): no ratio, no clip.

    Per group of ``k = G`` responses the paper minimises
    ``L_g = 1/2 sum_i [beta (D_i - mean D) - (R_i - mean R)]^2 / (k - 1)`` with
    ``D_i = sum_t log(pi_theta / pi_old)``. Its gradient is
    ``-beta sum_i w_i grad D_i / (k - 1)``, ``w_i = (R_i - mean R) - beta (D_i - mean D)``
    (the cross term with ``mean grad D`` vanishes because the bracket sums to 0 over a
    group), so the per-token loss is ``l_it = -beta * k / (k - 1) * w_i * log_ratio_it`` with
    ``w`` constant: summed over tokens and averaged over the batch's sequences
    (``lossAggregation: seq-mean-token-sum``) it is ``mean_g`` of the paper's gradient.
    ``A_i`` stands for ``R_i - mean R`` (``advantage: dr_grpo``). Rows of a group must be
    contiguous and together (``config.group_size``). ``extra["gvpo_mse"]`` is the paper's
    ``L_g`` averaged over the included groups (0 when rewards equal the implied rewards).
    """
    if config.group_size is None:
        raise ValueError("policy loss gvpo needs group_size (completions per prompt)")
    k = config.group_size
    w, _ = gvpo_weights(log_ratio, advantages, token_mask, config.beta, k)
    scale = -config.beta * k / (k - 1)
    per_token = scale * w.unsqueeze(-1) * log_ratio
    with torch.no_grad():
        kept = (token_mask.sum(dim=-1) > 0).view(-1, k).any(dim=-1)
        # (A_i - mean A) - beta (D_i - mean D): the paper's bracket (A = R - mean R already)
        residual = w.view(-1, k) - advantages.detach().view(-1, k).mean(dim=-1, keepdim=True)
        per_group = 0.5 * (residual**2).sum(dim=-1) / (k - 1)
        mse = (per_group * kept).sum() / kept.sum().clamp(min=1)
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).detach()
    none = torch.zeros_like(log_ratio, dtype=torch.bool)
    return PolicyLossOutput(per_token, ratio, none, none, {"gvpo_mse": mse})
