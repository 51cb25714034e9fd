"""GSPO and CISPO (``algorithm.policyLoss: gspo | cispo``) on hand-made inputs: what sets them
apart from the token-level clip, and the edge cases (length-1 sequences, every token masked).
Parity with verl is in test_verl_parity.py."""

from __future__ import annotations

import pytest
import torch

from agpo_trainer.algorithms import PolicyLossConfig, compute_policy_loss
from agpo_trainer.algorithms.gspo import sequence_log_ratio

F64 = torch.float64


def _loss(logp, old, adv, mask, loss_type, agg="token-mean", **config):  # type: ignore[no-untyped-def]
    return compute_policy_loss(
        logp, old, adv, mask, config=PolicyLossConfig(**config), aggregation=agg,
        loss_type=loss_type,
    )  # fmt: skip


def test_gspo_gradient_is_the_sequence_objectives() -> None:
    """With seq-mean-token-mean, GSPO-token's gradient equals autograd of the paper's sequence
    objective ``-mean_i min(s_i A_i, clip(s_i) A_i)``, ``s_i = exp(mean_t log-ratio)``."""
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 6, generator=g, dtype=F64)
    logp = (old + 0.05 * torch.randn(4, 6, generator=g, dtype=F64)).requires_grad_()
    mask = torch.arange(6).unsqueeze(0) < torch.tensor([[6], [3], [1], [5]])
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0], dtype=F64)
    cfg = {"clip_low": 0.01, "clip_high": 0.02}
    loss, _ = _loss(logp, old, adv, mask, "gspo", "seq-mean-token-mean", **cfg)
    (ours,) = torch.autograd.grad(loss, logp)

    ref_logp = logp.detach().clone().requires_grad_()
    m = mask.to(F64)
    s = torch.exp(((ref_logp - old) * m).sum(-1) / m.sum(-1))
    ref = -torch.minimum(s * adv, s.clamp(1 - 0.01, 1 + 0.02) * adv).mean()
    (theirs,) = torch.autograd.grad(ref, ref_logp)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(loss, ref)


def test_gspo_on_length_one_sequences_is_the_token_clip() -> None:
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(5, 1, generator=g, dtype=F64)
    logp = old + 0.3 * torch.randn(5, 1, generator=g, dtype=F64)
    mask = torch.ones(5, 1, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0], dtype=F64)
    gspo, gm = _loss(logp, old, adv, mask, "gspo", clip_low=0.2, clip_high=0.28)
    clipped, cm = _loss(logp, old, adv, mask, "clipped", clip_low=0.2, clip_high=0.28)
    torch.testing.assert_close(gspo, clipped)
    assert gm == pytest.approx(cm)


def test_gspo_reports_one_ratio_per_sequence() -> None:
    old = torch.zeros(2, 3, dtype=F64)
    logp = torch.tensor([[0.1, 0.2, 0.3], [0.0, -0.3, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    seq = sequence_log_ratio(logp - old, mask.to(F64))
    torch.testing.assert_close(seq, torch.tensor([[0.2], [-0.15]], dtype=F64))
    _, m = _loss(logp, old, torch.tensor([1.0, 1.0], dtype=F64), mask, "gspo",
                 clip_low=0.2, clip_high=0.28)  # fmt: skip
    assert m["ratio_min"] == pytest.approx(torch.exp(torch.tensor(-0.15)).item())
    assert m["ratio_max"] == pytest.approx(torch.exp(torch.tensor(0.2)).item())


def test_cispo_keeps_the_gradient_of_clipped_tokens() -> None:
    """A token with ratio 2 and A > 0: PPO's clip zeroes its gradient, CISPO weights it by the
    clipped ratio 1 + high (and reports it clipped above)."""
    old = torch.zeros(1, 2, dtype=F64)
    logp = torch.tensor([[float(torch.log(torch.tensor(2.0))), 0.0]], dtype=F64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    adv = torch.tensor([1.0], dtype=F64)
    grads = {}
    for kind in ("clipped", "cispo"):
        x = logp.clone().requires_grad_()
        loss, metrics = _loss(x, old, adv, mask, kind, clip_low=0.2, clip_high=0.28)
        (grads[kind],) = torch.autograd.grad(loss, x)
        assert metrics["clip_ratio_high"] == 0.5 and metrics["clip_ratio_low"] == 0.0
    assert grads["clipped"][0, 0] == 0.0
    assert grads["cispo"][0, 0] == pytest.approx(-1.28 / 2)  # -w A / tokens
    assert grads["cispo"][0, 1] == pytest.approx(-1.0 / 2)


def test_cispo_low_one_has_no_lower_bound() -> None:
    old = torch.zeros(1, 1, dtype=F64)
    logp = torch.full((1, 1), -3.0, dtype=F64).requires_grad_()  # ratio 0.05
    loss, m = _loss(logp, old, torch.tensor([-1.0], dtype=F64), torch.ones(1, 1, dtype=torch.bool),
                    "cispo", clip_low=1.0, clip_high=0.28)  # fmt: skip
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == pytest.approx(torch.exp(torch.tensor(-3.0)).item())  # w = r, A = -1
    assert m["clip_ratio_low"] == 0.0


@pytest.mark.parametrize("kind", ["gspo", "cispo"])
def test_every_token_masked_gives_a_zero_loss_with_a_graph(kind: str) -> None:
    logp = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    old = torch.zeros(2, 3, dtype=F64)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    loss, m = _loss(logp, old, torch.tensor([1.0, -1.0], dtype=F64), mask, kind,
                    clip_low=0.2, clip_high=0.28)  # fmt: skip
    loss.backward()
    assert loss.item() == 0.0 and logp.grad is not None and not logp.grad.any()
    assert m["ratio_min"] == float("inf") and m["ratio_max"] == float("-inf")
