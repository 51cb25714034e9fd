"""Loss aggregations (spec ``algorithm.lossAggregation``, verl ``agg_loss`` modes) and the
global denominators that make the loss independent of micro-batches and world size.

An aggregation has two halves under one name:

* the registered ``fn(per_token_loss, token_mask, seq_mask, max_tokens)``: a micro-batch's
  loss, a mean over that micro-batch's own denominator (its tokens or its sequences);
* its ``denominator`` trait (``agpo_api.catalog``): which count that denominator is, so the
  loop can weight each micro-batch by its *share* of the whole batch's denominator.

``sum over micro-batches and ranks of reduce * share`` is the aggregation of the whole batch:
a token-mean over 2 ranks is the token-mean over all their tokens, not the mean of two means.
DDP then averages gradients over ranks, which :func:`rank_loss` undoes with the world size.

Aggregations:

* ``token-mean``: sum of token losses / number of tokens (DAPO token-level loss; AGPO's
  authors' code uses it).
* ``seq-mean-token-mean``: mean over sequences of each sequence's token mean (original GRPO).
* ``seq-mean-token-sum``: mean over sequences of each sequence's token sum (verl's name; GVPO's
  per-sequence log-probability sums, arXiv 2504.19599).
* ``seq-mean-token-sum-norm``: mean over sequences of ``sum_t loss_t / max_tokens`` (Dr. GRPO,
  arXiv 2503.20783; TRL divides by ``max_completion_length``; ``max_tokens=None`` uses ``T``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from agpo_api.catalog import LOSS_AGGREGATIONS as CATALOG
from agpo_api.catalog import AggregationTraits
from agpo_api.metrics_table import reduction
from agpo_trainer.registry import Registry


class Counts(NamedTuple):
    """Included response tokens and included sequences of a batch or a slice of it."""

    tokens: int
    sequences: int


def count_included(lengths: Sequence[int], sample_mask: Sequence[bool]) -> Counts:
    """:class:`Counts` of the completions whose ``sample_mask`` is True."""
    kept = [n for n, m in zip(lengths, sample_mask, strict=True) if m]
    return Counts(tokens=sum(kept), sequences=len(kept))


# fn(per_token_loss[B,T], token_mask[B,T] float, seq_mask[B] float, max_tokens) -> scalar
AggregationFn = Callable[[Tensor, Tensor, Tensor, int | None], Tensor]

LOSS_AGGREGATIONS: Registry[AggregationFn, AggregationTraits] = Registry(
    "loss aggregation", CATALOG
)

#: What a global denominator counts (an aggregation's ``denominator`` trait) -> the count.
DENOMINATORS: dict[str, Callable[[Counts], int]] = {
    "tokens": lambda c: c.tokens,
    "sequences": lambda c: c.sequences,
}


def register_loss_aggregation(
    name: str, *, traits: AggregationTraits | None = None
) -> Callable[[AggregationFn], AggregationFn]:
    """Decorator: register ``fn(per_token_loss, token_mask, seq_mask, max_tokens) -> scalar``.
    A new name gives its ``traits``: what its global denominator counts
    (``AggregationTraits("tokens")`` or ``AggregationTraits("sequences")``).

    ``token_mask[B, T]`` (float) already excludes masked samples; ``seq_mask[B]`` (float) is 1
    for sequences that count in a per-sequence denominator (included and non-empty).
    """
    return LOSS_AGGREGATIONS.register(name, traits=traits)


def get_loss_aggregation(name: str) -> AggregationFn:
    """Return the aggregation registered as ``name`` (ValueError listing valid names)."""
    return LOSS_AGGREGATIONS.get(name)


@register_loss_aggregation("token-mean")
def token_mean(
    per_token_loss: Tensor, token_mask: Tensor, seq_mask: Tensor, max_tokens: int | None
) -> Tensor:
    """``sum_{b,t} m_bt l_bt / sum_{b,t} m_bt`` (DAPO token-level loss). Shapes ``[B, T]``."""
    # clamp(min=1): with every token masked the numerator is an exact 0 (graph kept), not 0/0.
    return (per_token_loss * token_mask).sum() / token_mask.sum().clamp(min=1.0)


@register_loss_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(
    per_token_loss: Tensor, token_mask: Tensor, seq_mask: Tensor, max_tokens: int | None
) -> Tensor:
    """``mean_b [sum_t m_bt l_bt / sum_t m_bt]`` over counted sequences (GRPO, 2402.03300)."""
    seq_loss = (per_token_loss * token_mask).sum(dim=-1) / token_mask.sum(dim=-1).clamp(min=1.0)
    return (seq_loss * seq_mask).sum() / seq_mask.sum().clamp(min=1.0)


@register_loss_aggregation("seq-mean-token-sum")
def seq_mean_token_sum(
    per_token_loss: Tensor, token_mask: Tensor, seq_mask: Tensor, max_tokens: int | None
) -> Tensor:
    """``mean_b [sum_t m_bt l_bt]`` over counted sequences (verl ``seq-mean-token-sum``; the
    sequence-level sums GVPO's objective is written in, arXiv 2504.19599)."""
    seq_loss = (per_token_loss * token_mask).sum(dim=-1)
    return (seq_loss * seq_mask).sum() / seq_mask.sum().clamp(min=1.0)


@register_loss_aggregation("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    per_token_loss: Tensor, token_mask: Tensor, seq_mask: Tensor, max_tokens: int | None
) -> Tensor:
    """``mean_b [sum_t m_bt l_bt / max_tokens]`` (Dr. GRPO, arXiv 2503.20783).

    A constant divisor removes GRPO's length bias (long wrong answers penalised less per token).
    ``max_tokens=None`` uses the padded width ``T`` like verl; pass the generation limit
    (``maxTokens``) to match TRL's ``max_completion_length``.
    """
    norm = float(per_token_loss.shape[-1] if max_tokens is None else max_tokens)
    seq_loss = (per_token_loss * token_mask).sum(dim=-1) / norm
    return (seq_loss * seq_mask).sum() / seq_mask.sum().clamp(min=1.0)


def masks(
    response_mask: Tensor, sample_mask: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Token mask ``[B, T]`` with excluded samples zeroed, and the per-sequence mask ``[B]``."""
    token_mask = response_mask.to(dtype)
    if sample_mask is not None:
        token_mask = token_mask * sample_mask.to(dtype).unsqueeze(-1)
    seq_mask = (token_mask.sum(dim=-1) > 0).to(dtype)
    return token_mask, seq_mask


# ----------------------------------------------------------------------------- global weights


def micro_batch_share(aggregation: str, local: Counts, total: Counts) -> float:
    """The fraction of the whole batch's denominator a micro-batch holds.

    A micro-batch's loss is a mean over its own denominator; times this share it becomes its
    part of the mean over the whole (all-rank) batch.
    """
    count = DENOMINATORS[LOSS_AGGREGATIONS.traits(aggregation).denominator]
    return count(local) / max(count(total), 1)


def rank_loss(loss: Tensor, share: float, world_size: int) -> Tensor:
    """What a rank backpropagates for a micro-batch: its share of the global loss, times the
    world size because DDP/FSDP *average* gradients over ranks where the loss needs a sum."""
    return loss * share * world_size


def accumulate(summed: dict[str, float], metrics: Mapping[str, float], share: float) -> None:
    """Combine a micro-batch's metrics into ``summed`` (in place), each as the metrics table
    says (``agpo_api.metrics_table.reduction``): a mean figure weighted like its loss (summed
    over ranks afterwards it is the whole batch's value), a min or max kept as the extreme."""
    for key, value in metrics.items():
        how = reduction(key)
        if how == "mean":
            summed[key] = summed.get(key, 0.0) + value * share
        elif key not in summed:
            summed[key] = value
        else:
            summed[key] = min(summed[key], value) if how == "min" else max(summed[key], value)
