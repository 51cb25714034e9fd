"""Property tests (hypothesis): invariants, slow per-group references, gradients.

The slow references below loop over groups / sequences in plain Python, straight from the
formulas in docs/algorithm.md; the library code is vectorised. They must agree on random
shapes and seeds (verl ``test_grpo_and_vectorized_equivalence`` style).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agpo_trainer.algorithms import (
    LOSS_AGGREGATIONS,
    AdvantageOptions,
    compute_advantages,
    compute_advantages_and_mask,
    compute_policy_loss,
)
from agpo_trainer.rewards import agpo_length_reward, kimi_length_reward, overlong_penalty

FAST = settings(max_examples=100, deadline=None)
EPS = 1e-4


# ----------------------------------------------------------------------------- data


@st.composite
def grouped_rewards(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    """Random rewards ``[num_groups * G]``: binary, multi-level or continuous, with some
    homogeneous groups mixed in."""
    group_size = draw(st.integers(2, 16))
    num_groups = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["binary", "levels", "continuous"]))
    g = torch.Generator().manual_seed(seed)
    shape = (num_groups, group_size)
    if kind == "binary":
        r = torch.randint(0, 2, shape, generator=g).double()
    elif kind == "levels":
        r = torch.randint(0, 4, shape, generator=g).double() / 2 - 0.5
    else:
        r = torch.randn(shape, generator=g, dtype=torch.float64)
    homogeneous = torch.rand(num_groups, generator=g) < 0.3
    r[homogeneous] = r[homogeneous][:, :1]
    return r.reshape(-1).float(), group_size


@st.composite
def loss_batch(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    """Random ``[B, T]`` log-probs near the rollout ones, masks with at least one token."""
    b = draw(st.integers(1, 6))
    t = draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    logp = old + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    return {
        "logprobs": logp,
        "old_logprobs": old,
        "ref_logprobs": old + 0.2 * torch.randn(b, t, generator=g, dtype=torch.float64),
        "advantages": torch.randn(b, generator=g, dtype=torch.float64),
        "response_mask": mask,
        "sample_mask": torch.rand(b, generator=g) < 0.7,
    }


# ----------------------------------------------------------------------------- references


def advantages_of(rewards: torch.Tensor, group_size: int, name: str) -> torch.Tensor:
    """Advantages of an estimator, or of ``agpo``: GRPO with the agpo zero-variance policy
    (the removed ``agpo`` estimator; spec preset agpo)."""
    if name == "agpo":
        adv, _ = compute_advantages_and_mask(
            rewards, group_size, advantage="grpo", zero_variance="agpo",
            options=AdvantageOptions(reward_range=(0.0, 1.0)),  # the accuracy reward's
        )  # fmt: skip
        return adv
    return compute_advantages(rewards, group_size, name)


def ref_advantages(rewards: list[float], group_size: int, estimator: str) -> list[float]:
    out: list[float] = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean = sum(group) / len(group)
        homogeneous = max(group) - min(group) <= 1e-6 * max(1.0, max(abs(x) for x in group))
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / (len(group) - 1))
        for r in group:
            if homogeneous:
                if estimator == "agpo":
                    out.append(1.0 if group[0] == 1.0 else -1.0 if group[0] == 0.0 else 0.0)
                else:
                    out.append(0.0)
            elif estimator == "dr_grpo":
                out.append(r - mean)
            else:
                out.append((r - mean) / (std + EPS))
    return out


def ref_agpo_length(lengths: list[int], correct: list[bool], group_size: int) -> list[float]:
    out: list[float] = []
    for s in range(0, len(lengths), group_size):
        lens, oks = lengths[s : s + group_size], correct[s : s + group_size]
        mixed = any(oks) and not all(oks)
        ok_lens = [x for x, ok in zip(lens, oks, strict=True) if ok]
        for x, ok in zip(lens, oks, strict=True):
            if ok and mixed:
                lo, hi = min(ok_lens), max(ok_lens)
                out.append(0.1 * (1 - (x - lo) / (hi - lo + 1e-6)))
            else:
                out.append(0.0)
    return out


def ref_kimi_length(lengths: list[int], correct: list[bool], group_size: int) -> list[float]:
    out: list[float] = []
    for s in range(0, len(lengths), group_size):
        lens, oks = lengths[s : s + group_size], correct[s : s + group_size]
        lo, hi = min(lens), max(lens)
        for x, ok in zip(lens, oks, strict=True):
            if hi == lo:
                out.append(0.0)
                continue
            lam = 0.5 - (x - lo) / (hi - lo)
            out.append(lam if ok else min(0.0, lam))
    return out


def ref_overlong(lengths: list[int], max_tokens: int, buffer: int) -> list[float]:
    out = []
    for x in lengths:
        if x <= max_tokens - buffer:
            out.append(0.0)
        elif x <= max_tokens:
            out.append(((max_tokens - buffer) - x) / buffer)
        else:
            out.append(-1.0)
    return out


def ref_loss(inputs: dict[str, torch.Tensor], aggregation: str, kl_coef: float) -> float:
    """Per-token Python loop over the formulas (clip 0.2 / 0.28, k3 KL)."""
    logp, old, ref = inputs["logprobs"], inputs["old_logprobs"], inputs["ref_logprobs"]
    adv, mask, keep = inputs["advantages"], inputs["response_mask"], inputs["sample_mask"]
    b, t = logp.shape
    seq_losses: list[tuple[float, int]] = []  # (sum of token losses, number of tokens)
    for i in range(b):
        if not keep[i]:
            continue
        total, count = 0.0, 0
        for j in range(t):
            if not mask[i, j]:
                continue
            rho = math.exp(float(logp[i, j] - old[i, j]))
            a = float(adv[i])
            surrogate = min(rho * a, min(max(rho, 0.8), 1.28) * a)
            d = float(ref[i, j] - logp[i, j])
            total += -surrogate + kl_coef * (math.exp(d) - d - 1)
            count += 1
        seq_losses.append((total, count))
    if not seq_losses:
        return 0.0
    if aggregation == "token-mean":
        return sum(s for s, _ in seq_losses) / max(1, sum(c for _, c in seq_losses))
    if aggregation == "seq-mean-token-mean":
        return sum(s / c for s, c in seq_losses) / len(seq_losses)
    if aggregation == "seq-mean-token-sum":
        return sum(s for s, _ in seq_losses) / len(seq_losses)
    return sum(s / t for s, _ in seq_losses) / len(seq_losses)


# ----------------------------------------------------------------------------- advantages


@FAST
@given(grouped_rewards())
def test_grpo_group_mean_is_zero(data: tuple[torch.Tensor, int]) -> None:
    rewards, group_size = data
    adv = compute_advantages(rewards, group_size, "grpo").view(-1, group_size)
    torch.testing.assert_close(adv.mean(-1), torch.zeros(adv.shape[0]), atol=1e-5, rtol=0)


@FAST
@given(grouped_rewards())
def test_agpo_equals_grpo_on_groups_with_variance(data: tuple[torch.Tensor, int]) -> None:
    rewards, group_size = data
    grouped = rewards.view(-1, group_size)
    has_variance = (grouped.amax(-1) - grouped.amin(-1)) > 1e-3
    agpo = advantages_of(rewards, group_size, "agpo").view(-1, group_size)
    grpo = compute_advantages(rewards, group_size, "grpo").view(-1, group_size)
    assert torch.equal(agpo[has_variance], grpo[has_variance])
    # and on the others AGPO gives one of +1 / -1 / 0 for the whole group
    for row in agpo[~has_variance]:
        assert row.unique().numel() == 1 and row[0].item() in (-1.0, 0.0, 1.0)


@FAST
@given(grouped_rewards(), st.sampled_from(["grpo", "agpo", "dr_grpo"]))
def test_advantages_match_per_group_reference(
    data: tuple[torch.Tensor, int], estimator: str
) -> None:
    rewards, group_size = data
    fast = advantages_of(rewards.double(), group_size, estimator)
    slow = torch.tensor(
        ref_advantages(rewards.double().tolist(), group_size, estimator), dtype=torch.float64
    )
    torch.testing.assert_close(fast, slow, atol=1e-9, rtol=1e-9)


@FAST
@given(grouped_rewards(), st.sampled_from(["grpo", "agpo", "dr_grpo"]))
def test_bfloat16_advantages_close_to_float32(
    data: tuple[torch.Tensor, int], estimator: str
) -> None:
    rewards, group_size = data
    rewards = rewards.bfloat16().float()  # representable in both
    out = advantages_of(rewards.bfloat16(), group_size, estimator)
    assert out.dtype == torch.bfloat16
    ref = advantages_of(rewards, group_size, estimator)
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.01)


# ----------------------------------------------------------------------------- length rewards


@st.composite
def lengths_and_correct(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int]:
    group_size = draw(st.integers(1, 16))
    num_groups = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    n = group_size * num_groups
    lengths = torch.randint(1, draw(st.sampled_from([3, 50, 4096])), (n,), generator=g)
    correct = torch.rand(n, generator=g) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    return lengths, correct, group_size


@FAST
@given(lengths_and_correct())
def test_length_rewards_match_reference(data: tuple[torch.Tensor, torch.Tensor, int]) -> None:
    lengths, correct, g = data
    lens, oks = lengths.tolist(), correct.tolist()
    torch.testing.assert_close(
        agpo_length_reward(lengths, correct, g).double(),
        torch.tensor(ref_agpo_length(lens, oks, g), dtype=torch.float64),
        atol=1e-7,
        rtol=0,
    )
    torch.testing.assert_close(
        kimi_length_reward(lengths, correct, g).double(),
        torch.tensor(ref_kimi_length(lens, oks, g), dtype=torch.float64),
        atol=1e-7,
        rtol=0,
    )
    max_tokens = int(lengths.max()) - 1 if int(lengths.max()) > 1 else 1
    buffer = max(0, max_tokens // 3)
    torch.testing.assert_close(
        overlong_penalty(lengths, max_tokens, buffer).double(),
        torch.tensor(ref_overlong(lens, max_tokens, buffer), dtype=torch.float64),
        atol=1e-7,
        rtol=0,
    )


# ----------------------------------------------------------------------------- the loss


@FAST
@given(loss_batch(), st.sampled_from(sorted(LOSS_AGGREGATIONS.names())), st.sampled_from([0, 0.1]))
def test_loss_matches_per_token_reference(
    inputs: dict[str, torch.Tensor], aggregation: str, kl_coef: float
) -> None:
    loss, _ = compute_policy_loss(
        inputs["logprobs"],
        inputs["old_logprobs"],
        inputs["advantages"],
        inputs["response_mask"],
        ref_logprobs=inputs["ref_logprobs"],
        kl_coef=kl_coef,
        aggregation=aggregation,
        sample_mask=inputs["sample_mask"],
    )
    assert loss.item() == pytest.approx(ref_loss(inputs, aggregation, kl_coef), abs=1e-9)


@FAST
@given(grouped_rewards(), st.sampled_from(sorted(LOSS_AGGREGATIONS.names())), st.integers(0, 999))
def test_mask_mode_zero_gradient_and_out_of_denominator(
    data: tuple[torch.Tensor, int], aggregation: str, seed: int
) -> None:
    rewards, group_size = data
    adv, keep = compute_advantages_and_mask(
        rewards, group_size, advantage="grpo", zero_variance="mask"
    )
    n, t = rewards.shape[0], 5
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t, generator=g)
    logp = (old + 0.1 * torch.randn(n, t, generator=g)).requires_grad_()
    mask = torch.arange(t).unsqueeze(0) < torch.randint(1, t + 1, (n, 1), generator=g)
    loss, _ = compute_policy_loss(
        logp, old, adv, mask, aggregation=aggregation, sample_mask=keep, max_tokens=t
    )
    loss.backward()
    assert logp.grad is not None
    assert torch.equal(logp.grad[~keep], torch.zeros_like(logp.grad[~keep]))
    # Out of the denominator: the same loss as on the kept rows alone.
    if keep.any():
        sub = logp.detach()[keep].requires_grad_()
        sub_loss, _ = compute_policy_loss(
            sub, old[keep], adv[keep], mask[keep], aggregation=aggregation, max_tokens=t
        )
        assert loss.item() == pytest.approx(sub_loss.item(), abs=1e-6)
    else:
        assert loss.item() == 0.0


@settings(max_examples=40, deadline=None)
@given(loss_batch(), st.sampled_from(sorted(LOSS_AGGREGATIONS.names())))
def test_loss_gradient_matches_finite_differences(
    inputs: dict[str, torch.Tensor], aggregation: str
) -> None:
    logp = inputs["logprobs"].clone().requires_grad_()

    def fn(x: torch.Tensor) -> torch.Tensor:
        loss, _ = compute_policy_loss(
            x,
            inputs["old_logprobs"],
            inputs["advantages"],
            inputs["response_mask"],
            ref_logprobs=inputs["ref_logprobs"],
            kl_coef=0.05,
            aggregation=aggregation,
            sample_mask=inputs["sample_mask"],
        )
        return loss

    # The clip makes the loss piecewise smooth; random ratios avoid the kinks almost surely,
    # and a kink within gradcheck's 1e-6 step would need a ratio within ~1e-6 of 0.8 / 1.28.
    ratio = torch.exp(inputs["logprobs"] - inputs["old_logprobs"])
    near_kink = ((ratio - 0.8).abs() < 1e-4) | ((ratio - 1.28).abs() < 1e-4)
    if near_kink.any():
        return
    assert torch.autograd.gradcheck(fn, (logp,), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- the paper's point


@pytest.mark.parametrize("group_size", [2, 8, 16])
def test_all_zero_rewards_grpo_gives_no_gradient_agpo_does(group_size: int) -> None:
    """AGPO v1's motivation: a group whose rewards are all 0 teaches GRPO nothing."""
    rewards = torch.zeros(group_size)
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(group_size, 6, generator=g)
    mask = torch.ones(group_size, 6, dtype=torch.bool)

    grads = {}
    for estimator in ("grpo", "agpo"):
        logp = (old + 0.05 * torch.randn(group_size, 6, generator=g)).requires_grad_()
        adv = advantages_of(rewards, group_size, estimator)
        loss, _ = compute_policy_loss(logp, old, adv, mask)
        loss.backward()
        assert logp.grad is not None
        grads[estimator] = logp.grad

    assert torch.equal(grads["grpo"], torch.zeros_like(grads["grpo"]))
    assert grads["agpo"].abs().min() > 0
    # A = -1 on every completion: gradient descent lowers every sampled token's log-prob.
    assert (grads["agpo"] > 0).all()
