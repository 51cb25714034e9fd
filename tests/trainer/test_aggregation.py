"""The global denominators of the loss aggregations (agpo_trainer.algorithms.aggregation).

The training loop cuts a batch into ranks and micro-batches; each micro-batch's loss is a mean
over its own denominator, weighted by its share of the whole batch's. These tests pin that the
registered shares give exactly what the loop computed by name before (``token-mean`` -> token
share, anything else -> sequence share), and that the result is the one-process loss and
gradient whatever the world size.
"""

from __future__ import annotations

import pytest
import torch

from agpo_api.catalog import AggregationTraits
from agpo_trainer.algorithms import (
    LOSS_AGGREGATIONS,
    Counts,
    accumulate,
    compute_policy_loss,
    count_included,
    micro_batch_share,
    rank_loss,
    register_loss_aggregation,
)

B, T = 12, 6


def by_name_share(aggregation: str, local: Counts, total: Counts) -> float:
    """The loop's choice before the refactor, verbatim."""
    return (
        local.tokens / max(total.tokens, 1)
        if aggregation == "token-mean"
        else local.sequences / max(total.sequences, 1)
    )


def make_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64)
    return {
        "logprobs": old + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64),
        "old_logprobs": old,
        "advantages": torch.randn(B, generator=g, dtype=torch.float64),
        "response_mask": mask,
        "sample_mask": torch.rand(B, generator=g) > 0.3,
        "ref_logprobs": old + 0.1 * torch.randn(B, T, generator=g, dtype=torch.float64),
    }


def sharded_loss(
    data: dict[str, torch.Tensor], aggregation: str, world: int, micro: int, by_name: bool
) -> tuple[float, torch.Tensor]:
    """The loop's computation on ``world`` simulated ranks: the summed loss metric and the
    DDP-averaged gradient of the log-probs."""
    logp = data["logprobs"].clone().requires_grad_()
    lengths = data["response_mask"].sum(dim=1).tolist()
    keep = data["sample_mask"].tolist()
    total = count_included(lengths, keep)
    summed: dict[str, float] = {}
    per = B // world
    for rank in range(world):
        for start in range(rank * per, (rank + 1) * per, micro):
            idx = slice(start, min(start + micro, (rank + 1) * per))
            loss, metrics = compute_policy_loss(
                logp[idx],
                data["old_logprobs"][idx],
                data["advantages"][idx],
                data["response_mask"][idx],
                ref_logprobs=data["ref_logprobs"][idx],
                kl_coef=0.05,
                aggregation=aggregation,
                sample_mask=data["sample_mask"][idx],
                max_tokens=T,
            )
            local = count_included(lengths[idx], keep[idx])
            share = (by_name_share if by_name else micro_batch_share)(aggregation, local, total)
            rank_loss(loss, share, world).backward()
            accumulate(summed, metrics, share)
    assert logp.grad is not None
    return summed["loss"], logp.grad / world  # DDP averages the ranks' gradients


@pytest.mark.parametrize("aggregation", sorted(LOSS_AGGREGATIONS.names()))
@pytest.mark.parametrize("seed", range(5))
def test_registered_share_is_the_old_by_name_choice(aggregation: str, seed: int) -> None:
    data = make_batch(seed)
    for micro in (1, 2, 6):
        old_loss, old_grad = sharded_loss(data, aggregation, 2, micro, by_name=True)
        new_loss, new_grad = sharded_loss(data, aggregation, 2, micro, by_name=False)
        assert new_loss == old_loss
        assert torch.equal(new_grad, old_grad)


@pytest.mark.parametrize("aggregation", sorted(LOSS_AGGREGATIONS.names()))
@pytest.mark.parametrize("seed", range(5))
def test_two_ranks_give_the_one_process_loss_and_gradient(aggregation: str, seed: int) -> None:
    data = make_batch(seed)
    logp = data["logprobs"].clone().requires_grad_()
    loss, _ = compute_policy_loss(
        logp,
        data["old_logprobs"],
        data["advantages"],
        data["response_mask"],
        ref_logprobs=data["ref_logprobs"],
        kl_coef=0.05,
        aggregation=aggregation,
        sample_mask=data["sample_mask"],
        max_tokens=T,
    )
    loss.backward()
    for world, micro in ((1, B), (2, 6), (2, 4), (4, 1)):
        got_loss, got_grad = sharded_loss(data, aggregation, world, micro, by_name=False)
        assert got_loss == pytest.approx(loss.item(), abs=1e-12)
        torch.testing.assert_close(got_grad, logp.grad, atol=1e-12, rtol=0)


def test_every_aggregation_declares_its_denominator() -> None:
    assert micro_batch_share("token-mean", Counts(7, 3), Counts(14, 6)) == 7 / 14
    assert micro_batch_share("seq-mean-token-mean", Counts(7, 3), Counts(14, 4)) == 3 / 4
    with pytest.raises(ValueError, match="valid names"):
        micro_batch_share("mean", Counts(1, 1), Counts(2, 2))
    with LOSS_AGGREGATIONS.scope():  # a new aggregation says what it divides by
        register_loss_aggregation("seq-sum", traits=AggregationTraits("sequences"))(
            lambda loss, token_mask, seq_mask, max_tokens: (loss * token_mask).sum()
        )
        assert micro_batch_share("seq-sum", Counts(7, 3), Counts(14, 4)) == 3 / 4
    assert "seq-sum" not in LOSS_AGGREGATIONS


def test_empty_batch_share_is_zero_not_nan() -> None:
    assert micro_batch_share("token-mean", Counts(0, 0), Counts(0, 0)) == 0.0
    assert count_included([3, 4, 5], [True, False, True]) == (8, 2)
