"""Rollout correction (``algorithm.rolloutCorrection``): importance weights for the gap between
the rollout engine's log-probs and the trainer's (TIS and MIS; REFERENCES: Yao et al. 2025,
verl ``rollout_corr``, TRL ``vllm_importance_sampling_mode``).

With correction on, the PPO old log-probs are the trainer's own (recomputed before the first
update of a batch, :func:`agpo_trainer.update.trainer_logprobs`) and the rollout engine's are
the behaviour policy's; each token's loss is multiplied by a stop-gradient weight of

    log w_t = old_t - rollout_t                  (level token)
    log w_t = sum_s (old_s - rollout_s)          (level sequence: one weight per completion)

``tis``: ``w = min(exp(log w), cap)``; ``mis``: ``w = 1`` where ``exp(log w)`` lies in
``[lower, upper]``, else 0 (the token, or the whole completion, leaves the numerator; the
denominators stay, as TRL's masks do, so the loss keeps its scale). Modes are a table of pure
functions (:data:`WEIGHTS`); ``none`` never reaches here.

The health figure ``rollout_trainer_kl`` is the mean k3 estimate of KL(rollout || trainer) over
the counted tokens, ``exp(d) - d - 1`` with ``d = old - rollout`` (samples come from the
rollout policy), always per token, in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from agpo_api.models import RolloutCorrectionSpec

#: The clamp of a log-weight before exp() (as the log-ratio's): a far-off sequence gives a
#: finite weight, which TIS truncates and MIS drops anyway.
LOG_WEIGHT_CLAMP = 20.0


def log_weights(old: Tensor, rollout: Tensor, valid: Tensor, level: str) -> Tensor:
    """``log w`` ``[B, T]`` (0 on padding) from the trainer's and the rollout's log-probs."""
    zero = torch.zeros((), dtype=old.dtype, device=old.device)
    diff = torch.where(valid, old - rollout, zero)
    if level == "sequence":
        diff = torch.where(valid, diff.sum(-1, keepdim=True).expand_as(diff), zero)
    return diff


def _truncated(log_w: Tensor, spec: RolloutCorrectionSpec) -> Tensor:
    return torch.exp(log_w.clamp(-LOG_WEIGHT_CLAMP, LOG_WEIGHT_CLAMP)).clamp(max=spec.cap)


def _masked(log_w: Tensor, spec: RolloutCorrectionSpec) -> Tensor:
    w = torch.exp(log_w.clamp(-LOG_WEIGHT_CLAMP, LOG_WEIGHT_CLAMP))
    return ((w >= spec.lower) & (w <= spec.upper)).to(log_w.dtype)


#: ``rolloutCorrection.mode`` -> the weights of ``log w`` (detached, ``[B, T]``).
WEIGHTS: dict[str, Callable[[Tensor, RolloutCorrectionSpec], Tensor]] = {
    "tis": _truncated,
    "mis": _masked,
}


def correction_weights(
    old: Tensor, rollout: Tensor, valid: Tensor, spec: RolloutCorrectionSpec
) -> Tensor:
    """The stop-gradient weight of every token ``[B, T]`` (1 on padding is irrelevant: the
    token mask zeroes it)."""
    if spec.mode not in WEIGHTS:
        raise ValueError(f"rolloutCorrection.mode {spec.mode!r} has no weights; one of "
                         f"{sorted(WEIGHTS)}")  # fmt: skip
    return WEIGHTS[spec.mode](log_weights(old, rollout, valid, spec.level), spec).detach()


def rollout_trainer_k3(old: Tensor, rollout: Tensor, valid: Tensor) -> Tensor:
    """Per-token k3 of KL(rollout || trainer), ``[B, T]`` (0 on padding), in float64 as
    ``expm1(d) - d``: on CPU in float32 the log-probs differ by ~1e-7, where ``exp(d) - d - 1``
    in float32 cancels to noise (it measured -6e-9)."""
    d = log_weights(old.double(), rollout.double(), valid, "token")
    d = d.clamp(-LOG_WEIGHT_CLAMP, LOG_WEIGHT_CLAMP)
    return torch.expm1(d) - d
