"""Rollout correction (``algorithm.rolloutCorrection``: TIS and MIS, token and sequence level)
against an independent numpy oracle of the formulas (REFERENCES: Yao et al. 2025; verl
``rollout_corr``; TRL ``vllm_importance_sampling_mode``), its edge cases, its health figures,
and a 2-step in-process run with AGPO's zero-variance advantages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agpo_api import parse_job
from agpo_api.models import RolloutCorrectionSpec
from agpo_trainer.algorithms import PolicyLossConfig, compute_policy_loss
from agpo_trainer.rollout.inprocess import InProcessBackend
from agpo_trainer.runtime import Runtime
from agpo_trainer.train import Recording, train

from agpo_testlib import job_doc

F64 = torch.float64


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, t = 6, 5
    lengths = torch.tensor([5, 1, 3, 5, 2, 4])
    rollout = -torch.rand(n, t, generator=g, dtype=F64) * 2
    old = rollout + 0.4 * torch.randn(n, t, generator=g, dtype=F64)  # the trainer's
    return {
        "rollout": rollout,
        "old": old,
        "logp": old + 0.1 * torch.randn(n, t, generator=g, dtype=F64),
        "mask": torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1),
        "adv": torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0], dtype=F64),
    }


def oracle_weights(x: dict[str, torch.Tensor], spec: RolloutCorrectionSpec) -> np.ndarray:
    """The formulas, in numpy: ``w = exp(old - rollout)`` per token, or per completion the
    product over its tokens; tis ``min(w, cap)``, mis ``1`` inside ``[lower, upper]`` else 0."""
    old, rollout = x["old"].numpy(), x["rollout"].numpy()
    mask = x["mask"].numpy()
    w = np.exp(np.where(mask, old - rollout, 0.0))
    if spec.level == "sequence":
        w = np.repeat(np.prod(np.where(mask, w, 1.0), axis=1, keepdims=True), w.shape[1], 1)
    if spec.mode == "tis":
        return np.minimum(w, spec.cap)
    return ((w >= spec.lower) & (w <= spec.upper)).astype(float)


def oracle_loss(x: dict[str, torch.Tensor], w: np.ndarray, low: float, high: float) -> float:
    """Token-mean PPO clip with old = the trainer's log-probs, each token weighted by ``w``."""
    mask = x["mask"].numpy()
    r = np.exp(x["logp"].numpy() - x["old"].numpy())
    a = x["adv"].numpy()[:, None]
    per = -np.minimum(r * a, np.clip(r, 1 - low, 1 + high) * a) * w
    return float(np.where(mask, per, 0.0).sum() / mask.sum())


SPECS = [
    RolloutCorrectionSpec(mode="tis", level="token", cap=2.0),
    RolloutCorrectionSpec(mode="tis", level="sequence", cap=3.0),
    RolloutCorrectionSpec(mode="tis", level="token", cap=1.0),  # cap exactly 1
    RolloutCorrectionSpec(mode="mis", level="token", lower=0.8, upper=1.25),
    RolloutCorrectionSpec(mode="mis", level="sequence", lower=0.5, upper=2.0),
]


def run(x: dict[str, torch.Tensor], spec: RolloutCorrectionSpec, **kw: object):  # type: ignore[no-untyped-def]
    return compute_policy_loss(
        x["logp"], x["old"], x["adv"], x["mask"], config=PolicyLossConfig(0.2, 0.28),
        rollout_logprobs=x["rollout"], correction=spec, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.mode}-{s.level}-{s.cap}")
def test_loss_and_figures_match_the_oracle(spec: RolloutCorrectionSpec) -> None:
    x = batch()
    w = oracle_weights(x, spec)
    loss, m = run(x, spec)
    assert loss.item() == pytest.approx(oracle_loss(x, w, 0.2, 0.28), rel=1e-10)
    mask = x["mask"].numpy()
    assert m["is_weight_mean"] == pytest.approx(w[mask].mean(), rel=1e-10)
    assert m["is_masked_ratio"] == pytest.approx((w[mask] == 0).mean(), abs=1e-6)  # float32 count
    d = (x["old"] - x["rollout"]).numpy()[mask]
    assert m["rollout_trainer_kl"] == pytest.approx(np.mean(np.exp(d) - d - 1), rel=1e-10)
    if spec.mode == "tis":
        assert w[mask].max() <= spec.cap
    assert 0 < m["is_masked_ratio"] < 1 or spec.mode == "tis"  # the inputs exercise the mask


def test_weights_carry_no_gradient() -> None:
    """The weight is a constant of the loss: the gradient is the uncorrected one times w."""
    x = batch(1)
    spec = RolloutCorrectionSpec(mode="tis", cap=2.0)
    logp = x["logp"].clone().requires_grad_()
    loss, _ = run({**x, "logp": logp}, spec)
    (grad,) = torch.autograd.grad(loss, logp)
    plain = x["logp"].clone().requires_grad_()
    base, _ = compute_policy_loss(plain, x["old"], x["adv"], x["mask"],
                                  config=PolicyLossConfig(0.2, 0.28))  # fmt: skip
    (base_grad,) = torch.autograd.grad(base, plain)
    w = torch.from_numpy(oracle_weights(x, spec))
    torch.testing.assert_close(grad, base_grad * w * x["mask"])


def test_equal_log_probs_change_nothing() -> None:
    x = batch(2)
    x["rollout"] = x["old"].clone()
    for spec in SPECS:
        loss, m = run(x, spec)
        base, _ = compute_policy_loss(x["logp"], x["old"], x["adv"], x["mask"],
                                      config=PolicyLossConfig(0.2, 0.28))  # fmt: skip
        torch.testing.assert_close(loss, base)
        assert m["rollout_trainer_kl"] == 0.0 and m["is_weight_mean"] == 1.0


def test_every_token_masked() -> None:
    x = batch(3)
    x["mask"] = torch.zeros_like(x["mask"])
    logp = x["logp"].clone().requires_grad_()
    loss, m = run({**x, "logp": logp}, SPECS[0])
    loss.backward()
    assert loss.item() == 0.0 and logp.grad is not None and not logp.grad.any()
    assert m["is_weight_mean"] == 0.0 and m["rollout_trainer_kl"] == 0.0


def test_correction_needs_the_rollout_log_probs() -> None:
    x = batch()
    with pytest.raises(ValueError, match="rollout_logprobs"):
        compute_policy_loss(x["logp"], x["old"], x["adv"], x["mask"],
                            correction=RolloutCorrectionSpec(mode="tis"))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tis", "mis"])
def test_two_steps_with_agpo_zero_variance_groups(mode: str, tmp_path: Path) -> None:
    """The product's loop (train() with the in-process backend) on builtin:tiny with the agpo
    preset (zero-variance groups get +-1) and the correction on: the trainer recomputes the
    old log-probs, so the first update's ratio is exactly 1, and the figures are reported."""
    doc = job_doc(
        {
            "spec.model.dtype": "float32",
            "spec.dataset": {"source": {"builtin": {"task": "arithmetic", "size": 64}}},
            "spec.algorithm": {"preset": "agpo", "groupSize": 4,
                               "rolloutCorrection": {"mode": mode}},
            "spec.training": {"steps": 2, "promptsPerStep": 2, "maxCompletionTokens": 4,
                              "learningRate": 1e-3, "maxPromptTokens": 16},
            "spec.rollout": {"maxModelLen": 64},
        }
    )  # fmt: skip
    seen = Recording()
    train(parse_job(doc), Runtime.single(tmp_path, tmp_path / "cache"),
          backend=InProcessBackend.of, callbacks=seen)  # fmt: skip
    assert [s.step for s in seen.steps] == [1, 2]
    for s in seen.steps:
        u = s.update
        assert u.ratio_min == pytest.approx(1.0, abs=1e-6)  # one update: old = the trainer's
        assert u.ratio_max == pytest.approx(1.0, abs=1e-6)
        assert u.rollout_trainer_kl is not None and u.rollout_trainer_kl >= 0.0
        assert u.is_weight_mean is not None and 0.0 < u.is_weight_mean <= 3.0
        assert u.is_masked_ratio is not None and 0.0 <= u.is_masked_ratio <= 1.0
        assert f'"rolloutTrainerKl": {u.rollout_trainer_kl}' in s.log_line()
    assert any(s.rollout.zero_variance_fraction > 0 for s in seen.steps)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("training", "aggregation"),
    [
        ({"miniBatches": 2, "epochs": 2}, "seq-mean-token-sum-norm"),
        ({"maxStaleness": 1}, "seq-mean-token-mean"),
    ],
    ids=["2x2-optimizer-steps", "overlapped"],
)
def test_correction_composes_with_several_updates_and_overlap(
    training: dict[str, int], aggregation: str, tmp_path: Path
) -> None:
    """TIS with ``miniBatches``/``epochs`` (the old log-probs are recomputed once, so from the
    second optimizer step on the ratio leaves 1) and with ``maxStaleness: 1`` (the batch was
    generated one version back: the trainer's log-probs are the current policy's, the weights
    correct the rest), under another aggregation each."""
    doc = job_doc(
        {
            "spec.model.dtype": "float32",
            "spec.dataset": {"source": {"builtin": {"task": "arithmetic", "size": 64}}},
            "spec.algorithm": {"preset": "agpo", "groupSize": 4, "lossAggregation": aggregation,
                               "rolloutCorrection": {"mode": "tis", "cap": 2.0}},
            "spec.training": {"steps": 3, "promptsPerStep": 4, "maxCompletionTokens": 4,
                              "learningRate": 1e-2, "maxPromptTokens": 16, **training},
            "spec.rollout": {"maxModelLen": 64},
        }
    )  # fmt: skip
    seen = Recording()
    train(parse_job(doc), Runtime.single(tmp_path, tmp_path / "cache"),
          backend=InProcessBackend.of, callbacks=seen)  # fmt: skip
    assert [s.step for s in seen.steps] == [1, 2, 3]
    for s in seen.steps:
        u = s.update
        assert u.is_weight_mean is not None and 0.0 < u.is_weight_mean <= 2.0
        assert u.rollout_trainer_kl is not None and u.rollout_trainer_kl >= 0.0
        if "miniBatches" in training:  # later optimizer steps see a moved policy
            assert u.ratio_min is not None and u.ratio_max is not None
            assert u.ratio_min < 1.0 < u.ratio_max
    if "maxStaleness" in training:
        assert [s.batch_staleness for s in seen.steps][1:] == [1, 1]
        # generated by the previous version, scored against the current one: a real gap
        assert max(s.update.rollout_trainer_kl or 0.0 for s in seen.steps[1:]) > 1e-6
