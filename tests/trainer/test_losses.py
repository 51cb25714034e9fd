"""Policy loss, aggregations, KL, entropy and log-prob helpers with hand-computed numbers."""

from __future__ import annotations

import math
from typing import TypedDict

import pytest
import torch

from agpo_trainer.algorithms import (
    LOSS_AGGREGATIONS,
    PolicyLossConfig,
    compute_policy_loss,
    entropy_from_logits,
    get_loss_aggregation,
    get_policy_loss,
    k3,
    masks,
    token_logprobs,
)

# Two sequences of 3 tokens. Ratios seq0: 1.5, 1.0, 0.7 (A=+1); seq1: 0.5, 1.1, [1.4 padding]
# (A=-1). With clip 0.2 / 0.28 (range [0.8, 1.28]) the per-token losses are
#   seq0: -min(1.5, 1.28) = -1.28, -1.0, -min(0.7, 0.8) = -0.7            sum -2.98
#   seq1: -min(-0.5, -0.8) = 0.8, -min(-1.1, -1.1) = 1.1                   sum  1.9
RATIOS = [[1.5, 1.0, 0.7], [0.5, 1.1, 1.4]]
MASK = [[1, 1, 1], [1, 1, 0]]


class Batch(TypedDict):
    logprobs: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    response_mask: torch.Tensor


def grad(x: torch.Tensor) -> torch.Tensor:
    assert x.grad is not None
    return x.grad


def batch(dtype: torch.dtype = torch.float32) -> Batch:
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.3, -2.0]], dtype=torch.float64)
    logp = (old + torch.log(torch.tensor(RATIOS, dtype=torch.float64))).to(dtype)
    return {
        "logprobs": logp.requires_grad_(),
        "old_logprobs": old.to(dtype),
        "advantages": torch.tensor([1.0, -1.0], dtype=dtype),
        "response_mask": torch.tensor(MASK, dtype=torch.bool),
    }


def test_token_mean_hand_computed() -> None:
    loss, metrics = compute_policy_loss(**batch())
    assert loss.item() == pytest.approx((-2.98 + 1.9) / 5, abs=1e-6)
    assert metrics["policy_loss"] == pytest.approx(-0.216, abs=1e-6)
    assert metrics["clip_ratio_high"] == pytest.approx(1 / 5)  # ratio 1.5, A > 0
    assert metrics["clip_ratio_low"] == pytest.approx(1 / 5)  # ratio 0.5, A < 0
    assert metrics["ratio_mean"] == pytest.approx(4.8 / 5, abs=1e-6)
    assert metrics["ratio_max"] == pytest.approx(1.5, abs=1e-6)  # 1.4 is padding
    assert metrics["ratio_min"] == pytest.approx(0.5, abs=1e-6)
    assert "kl" not in metrics and "entropy" not in metrics
    assert all(isinstance(v, float) for v in metrics.values())


def test_seq_mean_token_mean_hand_computed() -> None:
    loss, _ = compute_policy_loss(**batch(), aggregation="seq-mean-token-mean")
    assert loss.item() == pytest.approx((-2.98 / 3 + 1.9 / 2) / 2, abs=1e-6)


def test_seq_mean_token_sum_norm_hand_computed() -> None:
    loss, _ = compute_policy_loss(**batch(), aggregation="seq-mean-token-sum-norm", max_tokens=4)
    assert loss.item() == pytest.approx((-2.98 / 4 + 1.9 / 4) / 2, abs=1e-6)
    # Default constant: the padded width T = 3 (verl).
    loss, _ = compute_policy_loss(**batch(), aggregation="seq-mean-token-sum-norm")
    assert loss.item() == pytest.approx((-2.98 / 3 + 1.9 / 3) / 2, abs=1e-6)


def test_gradient_hand_computed() -> None:
    inputs = batch()
    loss, _ = compute_policy_loss(**inputs)
    loss.backward()
    # d/dlogp of -rho*A = -rho*A where the unclipped branch is active, 0 where clipped.
    expected = torch.tensor([[0.0, -1.0, -0.7], [0.0, 1.1, 0.0]]) / 5
    torch.testing.assert_close(grad(inputs["logprobs"]), expected, atol=1e-6, rtol=0)


def test_clip_parameters() -> None:
    # Symmetric 0.2 clip: ratio 1.5 now capped at 1.2.
    config = PolicyLossConfig(clip_low=0.2, clip_high=0.2)
    loss, metrics = compute_policy_loss(**batch(), config=config)
    assert loss.item() == pytest.approx((-1.2 - 1.0 - 0.7 + 0.8 + 1.1) / 5, abs=1e-6)
    assert metrics["clip_ratio_high"] == pytest.approx(1 / 5)


def test_k3_values_and_the_kl_term() -> None:
    logp = torch.zeros(1, 2)
    ref = torch.tensor([[math.log(2.0), 0.0]])
    kl = k3(ref - logp)
    torch.testing.assert_close(kl, torch.tensor([[1 - math.log(2.0), 0.0]]))
    # Clamped log-ratio: finite for a far-off token.
    assert torch.isfinite(k3(torch.tensor([100.0]))).all()
    assert k3(torch.tensor([100.0])).item() == pytest.approx(math.exp(20) - 21, rel=1e-5)

    inputs = batch()
    ref_logprobs = inputs["logprobs"].detach() + math.log(2.0)  # k3 = 1 - ln 2 per token
    loss, metrics = compute_policy_loss(**inputs, ref_logprobs=ref_logprobs, kl_coef=0.1)
    assert metrics["kl"] == pytest.approx(1 - math.log(2.0), abs=1e-6)
    assert loss.item() == pytest.approx(-0.216 + 0.1 * (1 - math.log(2.0)), abs=1e-6)
    assert metrics["policy_loss"] == pytest.approx(-0.216, abs=1e-6)
    # KL metric without it entering the loss.
    loss, metrics = compute_policy_loss(**batch(), ref_logprobs=ref_logprobs)
    assert loss.item() == pytest.approx(-0.216, abs=1e-6)
    assert "kl" in metrics


def test_kl_coef_needs_reference() -> None:
    with pytest.raises(ValueError, match="ref_logprobs"):
        compute_policy_loss(**batch(), kl_coef=0.01)


def test_sample_mask_excludes_numerator_and_denominator() -> None:
    inputs = batch()
    loss, metrics = compute_policy_loss(**inputs, sample_mask=torch.tensor([True, False]))
    assert loss.item() == pytest.approx(-2.98 / 3, abs=1e-6)
    assert metrics["ratio_max"] == pytest.approx(1.5, abs=1e-6)  # seq1's tokens left out
    loss.backward()
    assert torch.equal(grad(inputs["logprobs"])[1], torch.zeros(3))


@pytest.mark.parametrize("aggregation", sorted(LOSS_AGGREGATIONS.names()))
def test_everything_masked_gives_zero_with_graph(aggregation: str) -> None:
    inputs = batch()
    loss, metrics = compute_policy_loss(
        **inputs, aggregation=aggregation, sample_mask=torch.tensor([False, False])
    )
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(grad(inputs["logprobs"]), torch.zeros(2, 3))
    # every figure finite but the extremes, which are their min/max neutral values
    extremes = {"ratio_min": math.inf, "ratio_max": -math.inf}
    assert all(math.isfinite(v) or extremes.get(k) == v for k, v in metrics.items())


def test_padding_with_inf_logprobs_stays_finite() -> None:
    inputs = batch()
    logp = inputs["logprobs"].detach().clone()
    logp[1, 2] = -math.inf
    old = inputs["old_logprobs"].clone()
    old[1, 2] = -math.inf
    logp.requires_grad_()
    loss, _ = compute_policy_loss(
        logp, old, inputs["advantages"], inputs["response_mask"], ref_logprobs=old, kl_coef=0.1
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(grad(logp)).all()
    assert grad(logp)[1, 2] == 0


def test_entropy_metric_with_logits() -> None:
    logits = torch.zeros(2, 3, 4)  # uniform over 4 tokens
    _, metrics = compute_policy_loss(**batch(), logits=logits)
    assert metrics["entropy"] == pytest.approx(math.log(4), abs=1e-6)


def test_entropy_from_logits_matches_categorical() -> None:
    logits = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), expected)
    assert entropy_from_logits(logits.bfloat16()).dtype == torch.float32


def test_token_logprobs_matches_log_softmax() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 11, generator=g)
    ids = torch.randint(0, 11, (2, 4), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, ids), expected)
    out = token_logprobs(logits.bfloat16(), ids)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=5e-2, rtol=0)
    with pytest.raises(ValueError):
        token_logprobs(logits, ids[:, :3])


def test_token_logprobs_gradient_flows() -> None:
    logits = torch.randn(1, 2, 3, requires_grad=True)
    token_logprobs(logits, torch.tensor([[0, 2]])).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_bfloat16_logprobs() -> None:
    inputs = batch(torch.bfloat16)
    loss, _ = compute_policy_loss(**inputs)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(-0.216, abs=2e-2)
    loss.backward()
    assert grad(inputs["logprobs"]).dtype == torch.bfloat16


def test_aggregations_direct() -> None:
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    token_mask, seq_mask = masks(torch.tensor([[1, 1, 0], [1, 0, 0]]), None, per_token.dtype)

    def agg(name: str, max_tokens: int | None = None) -> float:
        return float(get_loss_aggregation(name)(per_token, token_mask, seq_mask, max_tokens))

    assert agg("token-mean") == pytest.approx(7 / 3)
    assert agg("seq-mean-token-mean") == pytest.approx((1.5 + 4) / 2)
    assert agg("seq-mean-token-sum-norm", 10) == pytest.approx((0.3 + 0.4) / 2)


def test_no_included_token_gives_neutral_extremes() -> None:
    inputs = batch()
    _, metrics = compute_policy_loss(**inputs, sample_mask=torch.tensor([False, False]))
    assert metrics["ratio_min"] == math.inf and metrics["ratio_max"] == -math.inf


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(
        ValueError,
        match=r"seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm, token-mean",
    ):
        compute_policy_loss(**batch(), aggregation="token-sum")
    with pytest.raises(ValueError, match=r"unknown policy loss 'ppo'.*cispo, clipped, gspo, gvpo"):
        compute_policy_loss(**batch(), loss_type="ppo")
    with pytest.raises(ValueError, match="valid names"):
        get_loss_aggregation("mean")
    with pytest.raises(ValueError, match="valid names"):
        get_policy_loss("x")


def test_shape_errors() -> None:
    inputs = batch()
    with pytest.raises(ValueError, match="advantages"):
        compute_policy_loss(**{**inputs, "advantages": torch.zeros(3)})
    with pytest.raises(ValueError, match="old_logprobs"):
        compute_policy_loss(**{**inputs, "old_logprobs": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="sample_mask"):
        compute_policy_loss(**inputs, sample_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="clip"):
        compute_policy_loss(**inputs, config=PolicyLossConfig(clip_low=1.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_loss_matches_cpu() -> None:
    cpu_loss, _ = compute_policy_loss(**batch())
    gpu = {k: v.detach().cuda() for k, v in batch().items()}
    gpu["logprobs"].requires_grad_()
    loss, _ = compute_policy_loss(**gpu)
    assert loss.device.type == "cuda"
    assert loss.item() == pytest.approx(cpu_loss.item(), abs=1e-6)
