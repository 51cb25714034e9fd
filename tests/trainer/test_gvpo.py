"""GVPO (arXiv 2504.19599): the implemented loss has the gradient of the paper's squared
objective, matches a hand computation, and is zero when rewards equal the implied rewards."""

from __future__ import annotations

import pytest
import torch

from agpo_trainer.algorithms import (
    PolicyLossConfig,
    compute_advantages,
    compute_policy_loss,
    gvpo_weights,
)

BETA = 0.1


def batch(seed: int, groups: int = 3, k: int = 4, t: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b = groups * k
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 2
    logp = (old + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)).requires_grad_()
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    rewards = torch.randn(b, generator=g, dtype=torch.float64)
    return {"logp": logp, "old": old, "mask": mask, "rewards": rewards}


def gvpo(x: dict[str, torch.Tensor], k: int, advantages: torch.Tensor) -> torch.Tensor:
    loss, _ = compute_policy_loss(
        x["logp"],
        x["old"],
        advantages,
        x["mask"],
        aggregation="seq-mean-token-sum",
        loss_type="gvpo",
        config=PolicyLossConfig(beta=BETA, group_size=k),
    )
    return loss


def squared_form(x: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """The paper: mean over groups of 1/2 sum_i [(R_theta,i - mean) - (R_i - mean)]^2/(k-1),
    R_theta,i = beta * sum_t log(pi_theta / pi_old)."""
    d = ((x["logp"] - x["old"]) * x["mask"]).sum(-1).view(-1, k)
    r = x["rewards"].view(-1, k)
    implied = BETA * d
    bracket = (implied - implied.mean(-1, keepdim=True)) - (r - r.mean(-1, keepdim=True))
    return (0.5 * (bracket**2).sum(-1) / (k - 1)).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 4])
def test_gradient_equals_autograd_of_the_squared_form(seed: int, k: int) -> None:
    x = batch(seed, k=k)
    adv = compute_advantages(x["rewards"], k, "dr_grpo")  # R_i - mean R
    (ours,) = torch.autograd.grad(gvpo(x, k, adv), x["logp"])
    (paper,) = torch.autograd.grad(squared_form(x, k), x["logp"])
    torch.testing.assert_close(ours, paper, atol=1e-12, rtol=1e-10)


def test_gradient_matches_a_hand_computation() -> None:
    # one group of k = 2, one token each: D = logp - old
    old = torch.tensor([[-1.0], [-2.0]], dtype=torch.float64)
    logp = torch.tensor([[-0.8], [-2.5]], dtype=torch.float64, requires_grad=True)
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    mask = torch.ones(2, 1, dtype=torch.bool)
    x = {"logp": logp, "old": old, "mask": mask, "rewards": rewards}
    adv = compute_advantages(rewards, 2, "dr_grpo")  # [0.5, -0.5]
    (grad,) = torch.autograd.grad(gvpo(x, 2, adv), logp)
    # D = [0.2, -0.5], mean -0.15, D - mean = [0.35, -0.35]
    # w = A - beta (D - mean D) = [0.5 - 0.035, -0.5 + 0.035] = [0.465, -0.465]
    # loss = -beta * sum_i w_i D_i / (k - 1) (one group) -> dL/dlogp_i = -beta * w_i
    expected = torch.tensor([[-0.1 * 0.465], [0.1 * 0.465]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)


def test_zero_gradient_when_rewards_equal_the_implied_rewards() -> None:
    x = batch(7)
    d = ((x["logp"] - x["old"]) * x["mask"]).sum(-1).detach()
    x["rewards"] = BETA * d + 3.0  # R_i - mean R == beta (D_i - mean D) in every group
    adv = compute_advantages(x["rewards"], 4, "dr_grpo")
    w, _ = gvpo_weights(x["logp"] - x["old"], adv.unsqueeze(-1), x["mask"].double(), BETA, 4)
    torch.testing.assert_close(w, torch.zeros_like(w), atol=1e-12, rtol=0)
    loss, metrics = compute_policy_loss(
        x["logp"], x["old"], adv, x["mask"], aggregation="seq-mean-token-sum",
        loss_type="gvpo", config=PolicyLossConfig(beta=BETA, group_size=4),
    )  # fmt: skip
    (grad,) = torch.autograd.grad(loss, x["logp"])
    assert grad.abs().max() < 1e-12
    assert metrics["gvpo_mse"] == pytest.approx(0.0, abs=1e-20)
    assert metrics["clip_ratio_low"] == metrics["clip_ratio_high"] == 0.0  # no clip in GVPO


def test_mse_metric_is_the_paper_loss() -> None:
    x = batch(3)
    adv = compute_advantages(x["rewards"], 4, "dr_grpo")
    _, metrics = compute_policy_loss(
        x["logp"], x["old"], adv, x["mask"], aggregation="seq-mean-token-sum",
        loss_type="gvpo", config=PolicyLossConfig(beta=BETA, group_size=4),
    )  # fmt: skip
    assert metrics["gvpo_mse"] == pytest.approx(float(squared_form(x, 4).detach()), rel=1e-10)


def test_split_groups_are_refused() -> None:
    x = batch(0, groups=1, k=4)
    adv = compute_advantages(x["rewards"], 4, "dr_grpo")
    with pytest.raises(ValueError, match="same micro-batch"):
        compute_policy_loss(
            x["logp"][:3], x["old"][:3], adv[:3], x["mask"][:3],
            aggregation="seq-mean-token-sum", loss_type="gvpo", config=PolicyLossConfig(group_size=4),
        )  # fmt: skip
    with pytest.raises(ValueError, match="group_size"):
        compute_policy_loss(x["logp"], x["old"], adv, x["mask"], loss_type="gvpo")
