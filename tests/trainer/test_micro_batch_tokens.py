"""trainer.microBatchTokens, trainer.logprobChunkTokens and trainer.gradientCheckpointing: how
the update cuts and computes its micro-batches changes memory, not the optimizer step."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_update import PROMPTS, VOCAB, G, make_policy

from agpo_trainer.experience import Batch
from agpo_trainer.policy import Policy, Responses, response_logprobs
from agpo_trainer.update import (
    micro_batches,
    rank_token_micro_batches,
    split_to,
    token_micro_batches,
    train_step,
)


def test_token_micro_batches_pack_padded_tokens_up_to_the_budget() -> None:
    # padded size = rows x longest: [3, 3] = 6, then 5 alone would make 3 x 5 = 15 > 10
    assert token_micro_batches([3, 3, 5, 1, 1], 10) == [range(0, 2), range(2, 4), range(4, 5)]
    # a row over the budget is a micro-batch of its own; none is empty
    assert token_micro_batches([20, 2, 2], 10) == [range(0, 1), range(1, 3)]
    assert token_micro_batches([4] * 6, 8) == [range(0, 2), range(2, 4), range(4, 6)]
    # whole groups of 2: [1, 1, 9, 1] is one group of 2 then one of 2 -> 4 x 9 > 20
    assert token_micro_batches([1, 1, 9, 1, 1, 1], 20, align=2) == [
        range(0, 2), range(2, 4), range(4, 6),
    ]  # fmt: skip
    assert token_micro_batches([2] * 8, 100, align=4) == [range(0, 8)]
    assert token_micro_batches([], 10) == []


def test_every_rank_gets_as_many_micro_batches_as_the_busiest() -> None:
    """FSDP2 runs collectives in every micro-batch: a rank with fewer would hang the others."""
    short, long = [2] * 8, [9, 9, 9, 9, 2, 2, 2, 2]
    assert len(token_micro_batches(short, 20)) == 1 and len(token_micro_batches(long, 20)) == 3
    cuts = [rank_token_micro_batches([short, long], r, 20) for r in (0, 1)]
    assert [len(c) for c in cuts] == [3, 3]
    assert cuts[0] == [range(0, 2), range(2, 4), range(4, 8)]  # halves of the largest first
    assert cuts[1] == token_micro_batches(long, 20)
    for cut in cuts:  # still a partition of the rank's rows, in order
        assert [i for part in cut for i in part] == list(range(8))
    # whole groups survive the extra cuts; a single group cannot be cut
    assert split_to([range(0, 8)], 3, align=4) == [range(0, 4), range(4, 8)]
    assert split_to([range(0, 12)], 3, align=4) == [range(0, 4), range(4, 8), range(8, 12)]


def varied_batch(policy: Policy) -> Batch:
    """Completions of 1..9 tokens and prompts of 2..4, old log-probs from the policy itself."""
    g = torch.Generator().manual_seed(5)
    n = PROMPTS * G
    prompts = [[1 + (i // G)] * (2 + i % 3) for i in range(n)]
    lengths = torch.randint(1, 10, (n,), generator=g).tolist()
    completions = [torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in lengths]
    x = Responses.build(prompts, completions, 0, policy.device)
    with torch.no_grad():
        old, _ = response_logprobs(policy.model, x, 1.0)
    return Batch(
        prompt_ids=prompts,
        completion_ids=completions,
        old_logprobs=[row[: len(c)].tolist() for row, c in zip(old, completions, strict=True)],
        advantages=torch.randn(n, generator=g).tolist(),
        sample_mask=[i % 5 != 0 for i in range(n)],  # some excluded rows: the shares matter
        example_indices=list(range(PROMPTS)),
    )


def trained(
    trainer: dict[str, Any], micro: int, algorithm: dict[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], float]:
    """The parameters after one train step (2 mini-batches x 2 epochs) and its grad norm.

    With SGD: AdamW divides by sqrt(v), which turns float noise on gradients that are exactly
    0 in theory (the key-projection bias: softmax ignores a shift of every key) into steps of
    +-lr, so two exact-up-to-rounding updates would differ by lr there."""
    training = {"miniBatches": 2, "epochs": 2}
    policy = make_policy(training, algorithm, trainer)
    policy.optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.5)
    policy.scheduler = torch.optim.lr_scheduler.LambdaLR(policy.optimizer, lambda _: 1.0)
    stats = train_step(policy, varied_batch(policy), policy.spec, rank=0, world_size=1, micro=micro)
    return {k: v.detach().clone() for k, v in policy.module.state_dict().items()}, stats.grad_norm


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("budget", [12, 30, 1000])
def test_token_budget_gives_the_parameters_of_fixed_micro_batches(budget: int) -> None:
    base, base_norm = trained({}, micro=64)
    got, norm = trained({"microBatchTokens": budget}, micro=64)
    assert_same(got, base)
    assert norm == pytest.approx(base_norm, rel=1e-4)
    # the first mini-batch (rows 0-7) is cut in several micro-batches where fixed gives one
    batch = varied_batch(make_policy({}))
    sizes = [len(batch.prompt_ids[i]) + len(batch.completion_ids[i]) for i in range(8)]
    assert len(micro_batches(8, 64)) == 1
    assert (len(token_micro_batches(sizes, budget)) > 1) == (budget < 1000)


def test_token_budget_keeps_gvpo_groups_whole() -> None:
    gvpo = {"preset": "gvpo"}
    base, _ = trained({}, micro=64, algorithm=gvpo)
    got, norm = trained({"microBatchTokens": 20}, micro=64, algorithm=gvpo)
    assert norm > 0
    assert_same(got, base)


def test_logprob_chunk_size_does_not_change_the_step() -> None:
    base, _ = trained({}, micro=3)
    got, _ = trained({"logprobChunkTokens": 1}, micro=3)
    assert_same(got, base)


def saved_elements(policy: Policy, x: Responses) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        response_logprobs(policy.model, x, 1.0)[0].sum().backward()
    return total


def test_gradient_checkpointing_same_step_fewer_saved_activations() -> None:
    base, base_norm = trained({}, micro=64)
    got, norm = trained({"gradientCheckpointing": True}, micro=64)
    assert_same(got, base)
    assert norm == pytest.approx(base_norm, rel=1e-5)
    plain, checkpointed = make_policy({}), make_policy({}, None, {"gradientCheckpointing": True})
    assert checkpointed.module.model.gradient_checkpointing  # HF's flag on the decoder
    plain.model.train()
    checkpointed.model.train()
    x = Responses.build([[1, 2]] * 8, [list(range(3, 30))] * 8, 0, torch.device("cpu"))
    assert saved_elements(checkpointed, x) < saved_elements(plain, x) / 2
