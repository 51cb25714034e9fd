"""Loss aggregations (spec ``algorithm.lossAggregation``, verl ``agg_loss`` modes) and the
global denominators that make the loss independent of micro-batches and world size.

An aggregation has two halves, registered together under one name:

* ``reduce(per_token_loss, token_mask, seq_mask, max_tokens)``: a micro-batch's loss, a mean
  over that micro-batch's own denominator (its tokens or its sequences);
* ``denominator(counts)``: which count that denominator is, so the loop can weight each
  micro-batch by its *share* of the whole batch's denominator.

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

from agpo_trainer.algorithms.registry import Registry


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
# fn(counts) -> the count the aggregation divides by
DenominatorFn = Callable[[Counts], int]

LOSS_AGGREGATIONS: Registry[AggregationFn] = Registry("loss aggregation")
LOSS_DENOMINATORS: Registry[DenominatorFn] = Registry("loss aggregation")


def by_tokens(counts: Counts) -> int:
    """The denominator of token means: included response tokens."""
    return counts.tokens


def by_sequences(counts: Counts) -> int:
    """The denominator of sequence means: included sequences."""
    return counts.sequences


def register_loss_aggregation(
    name: str, *, denominator: DenominatorFn
) -> Callable[[AggregationFn], AggregationFn]:
    """Decorator: register ``fn(per_token_loss, token_mask, seq_mask, max_tokens) -> scalar``
    and the count it divides by (:func:`by_tokens` or :func:`by_sequences`).

    ``token_mask[B, T]`` (float) already excludes masked samples; ``seq_mask[B]`` (float) is 1
    for sequences that count in a per-sequence denominator (included and non-empty).
    """

    def decorator(fn: AggregationFn) -> AggregationFn:
        LOSS_DENOMINATORS.register(name)(denominator)
        return LOSS_AGGREGATIONS.register(name)(fn)

    return decorator


def get_loss_aggregation(name: str) -> AggregationFn:
    """Return the aggregation registered as ``name`` (ValueError listing valid names)."""
    return LOSS_AGGREGATIONS.get(name)


def get_loss_denominator(name: str) -> DenominatorFn:
    """Return the denominator of the aggregation ``name`` (ValueError listing valid names)."""
    return LOSS_DENOMINATORS.get(name)


@register_loss_aggregation("token-mean", denominator=by_tokens)
def token_mean(
    per_token_loss: Tensor, token_mask: Tensor, seq_mask: Tensor, max_tokens: int | None
) -> Tensor:
    """``sum_{b,t} m_bt l_bt / sum_{b,t} m_bt`` (DAPO token-level loss). Shapes ``[B, T]``."""
    # clamp(min=1): with every token masked the numerator is an exact 0 (graph kept), not 0/0.
    return (per_token_loss * token_mask).sum() / token_mask.sum().clamp(min=1.0)


@register_loss_aggregation("seq-mean-token-mean", denominator=by_sequences)
def seq_mean_token_mean(
    per_token_loss: Tensor, token_mask: Tensor, seq_mask: Tensor, max_tokens: int | None
) -> Tensor:
    """``mean_b [sum_t m_bt l_bt / sum_t m_bt]`` over counted sequences (GRPO, 2402.03300)."""
    seq_loss = (per_token_loss * token_mask).sum(dim=-1) / token_mask.sum(dim=-1).clamp(min=1.0)
    return (seq_loss * seq_mask).sum() / seq_mask.sum().clamp(min=1.0)


@register_loss_aggregation("seq-mean-token-sum", denominator=by_sequences)
def seq_mean_token_sum(
    per_token_loss: Tensor, token_mask: Tensor, seq_mask: Tensor, max_tokens: int | None
) -> Tensor:
    """``mean_b [sum_t m_bt l_bt]`` over counted sequences (verl ``seq-mean-token-sum``; the
    sequence-level sums GVPO's objective is written in, arXiv 2504.19599)."""
    seq_loss = (per_token_loss * token_mask).sum(dim=-1)
    return (seq_loss * seq_mask).sum() / seq_mask.sum().clamp(min=1.0)


@register_loss_aggregation("seq-mean-token-sum-norm", denominator=by_sequences)
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


def aggregate_loss(
    per_token_loss: Tensor,
    response_mask: Tensor,
    aggregation: str = "token-mean",
    *,
    sample_mask: Tensor | None = None,
    max_tokens: int | None = None,
) -> Tensor:
    """Reduce ``per_token_loss[B, T]`` to a scalar with a registered aggregation.

    ``sample_mask[B]`` (Bool, False = excluded) removes rows from numerator and denominator.
    """
    fn = get_loss_aggregation(aggregation)
    token_mask, seq_mask = masks(response_mask, sample_mask, per_token_loss.dtype)
    return fn(per_token_loss, token_mask, seq_mask, max_tokens)


# ----------------------------------------------------------------------------- global weights


def micro_batch_share(aggregation: str, local: Counts, total: Counts) -> float:
    """The fraction of the whole batch's denominator a micro-batch holds.

    A micro-batch's loss is a mean over its own denominator; times this share it becomes its
    part of the mean over the whole (all-rank) batch.
    """
    count = get_loss_denominator(aggregation)
    return count(local) / max(count(total), 1)


def rank_loss(loss: Tensor, share: float, world_size: int) -> Tensor:
    """What a rank backpropagates for a micro-batch: its share of the global loss, times the
    world size because DDP/FSDP *average* gradients over ranks where the loss needs a sum."""
    return loss * share * world_size


def accumulate(summed: dict[str, float], metrics: Mapping[str, float], share: float) -> None:
    """Add a micro-batch's metrics, weighted like its loss, into ``summed`` (in place); summed
    over ranks afterwards they are the whole batch's values."""
    for key, value in metrics.items():
        summed[key] = summed.get(key, 0.0) + value * share
