"""Peer parity: our advantages (GRPO, Dr. GRPO), aggregations and clipped loss equal verl
0.9.1's ``core_algos`` on the same random inputs.

verl is not a dependency: ``make tools`` installs it (``--no-deps``) into ``.venv-verl/``
(``AGPO_VERL_DIR`` points elsewhere). verl's ``__init__`` imports heavy things, so the
subprocess below registers an empty ``verl`` package and imports ``core_algos`` alone.
Tolerances: float64 inputs, ``atol=1e-10, rtol=1e-7`` (verl's seq-mean-token-mean divides by
``tokens + 1e-8``; clip fraction ``1e-6``: verl averages it in float32); verl's dual clip is disabled (``clip_ratio_c`` 1e9)
because our loss has none.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agpo_trainer.algorithms import (
    PolicyLossConfig,
    compute_advantages,
    compute_policy_loss,
    get_loss_aggregation,
    masks,
)

from agpo_testlib import ROOT

VERL_DIR = Path(os.environ.get("AGPO_VERL_DIR", ROOT / ".venv-verl"))
AGGREGATIONS = [
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
]

#: verl's core_algos without verl's __init__ (an empty package registered first); the inputs
#: ``x`` and the outputs ``out`` of a script are torch.save files named by argv.
VERL_PRELUDE = r"""
import importlib.util, sys, types
import numpy as np, torch
spec = importlib.util.find_spec("verl")
pkg = types.ModuleType("verl"); pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["verl"] = pkg
import verl.trainer.ppo.core_algos as ca

x = torch.load(sys.argv[1])
out = {}
n, t = x["response_mask"].shape
"""

VERL_SCRIPT = (
    VERL_PRELUDE
    + r"""
from omegaconf import OmegaConf
index = np.array([i // x["group_size"] for i in range(n)])
token_rewards = torch.zeros(n, t, dtype=torch.float64)
token_rewards[:, 0] = x["rewards"]
for name, norm in (("grpo", True), ("dr_grpo", False)):
    adv, _ = ca.compute_grpo_outcome_advantage(
        token_rewards, x["response_mask"].double(), index, epsilon=1e-4,
        norm_adv_by_std_in_grpo=norm,
    )
    out["adv_" + name] = adv[:, 0]
mask = x["response_mask"].double()
for mode in x["aggregations"]:
    out["agg_" + mode] = ca.agg_loss(x["loss_mat"], mask, mode)
    config = OmegaConf.create({"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.28,
                               "clip_ratio_c": 1e9, "global_batch_info": {}})
    loss, metrics = ca.compute_policy_loss_vanilla(
        x["old"], x["logp"], x["advantages"].unsqueeze(-1).expand(n, t), mask,
        loss_agg_mode=mode, config=config,
    )
    out["pg_" + mode] = loss
    out["clipfrac_" + mode] = torch.tensor(metrics["actor/pg_clipfrac"], dtype=torch.float64)
torch.save(out, sys.argv[2])
"""
)


def run_verl(script: str, tmp: Path) -> dict[str, torch.Tensor]:
    """Run ``script`` on ``tmp/in.pt`` in a child with verl on its path; its ``out.pt``."""
    env = {**os.environ, "PYTHONPATH": f"{VERL_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp / "in.pt"), str(tmp / "out.pt")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(torch.load(tmp / "out.pt"))


def inputs(seed: int) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    group_size, groups, t = 4, 6, 9
    n = group_size * groups
    rewards = torch.randn(n, generator=g, dtype=torch.float64)
    rewards[:group_size] = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)  # binary
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    old = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    return {
        "group_size": group_size,
        "rewards": rewards,
        "response_mask": torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1),
        "loss_mat": torch.randn(n, t, generator=g, dtype=torch.float64),
        "old": old,
        "logp": old + 0.4 * torch.randn(n, t, generator=g, dtype=torch.float64),
        "advantages": torch.randn(n, generator=g, dtype=torch.float64),
        "aggregations": AGGREGATIONS,
    }


@pytest.mark.skipif(
    not (VERL_DIR / "verl").is_dir(),
    reason=f"verl 0.9.1 is not installed in {VERL_DIR} (run `make tools`)",
)
@pytest.mark.parametrize("seed", [0])
def test_matches_verl_core_algos(seed: int, tmp_path: Path) -> None:
    x = inputs(seed)
    torch.save(x, tmp_path / "in.pt")
    verl = run_verl(VERL_SCRIPT, tmp_path)
    # rtol 1e-7: verl's seq-mean-token-mean divides by (tokens + 1e-8)
    close = {"atol": 1e-10, "rtol": 1e-7}
    g = int(x["group_size"])  # type: ignore[call-overload]
    for name in ("grpo", "dr_grpo"):
        ours = compute_advantages(x["rewards"], g, name)  # type: ignore[arg-type]
        torch.testing.assert_close(ours, verl["adv_" + name], **close)
    mask = x["response_mask"]
    t = mask.shape[-1]  # type: ignore[union-attr]
    for mode in AGGREGATIONS:
        token_mask, seq_mask = masks(mask, None, x["loss_mat"].dtype)  # type: ignore[arg-type, union-attr]
        ours = get_loss_aggregation(mode)(x["loss_mat"], token_mask, seq_mask, None)  # type: ignore[arg-type]
        torch.testing.assert_close(ours, verl["agg_" + mode], **close)
        loss, metrics = compute_policy_loss(
            x["logp"], x["old"], x["advantages"], mask,  # type: ignore[arg-type]
            config=PolicyLossConfig(clip_low=0.2, clip_high=0.28), aggregation=mode,
            max_tokens=t,
        )  # fmt: skip
        torch.testing.assert_close(loss, verl["pg_" + mode], **close)
        # verl's pg_clipfrac: the clipped branch was strictly larger (= our low + high)
        ours_frac = metrics["clip_ratio_low"] + metrics["clip_ratio_high"]
        # (verl takes its masked mean in float32)
        assert ours_frac == pytest.approx(float(verl["clipfrac_" + mode]), abs=1e-6)


# --------------------------------------------------------------------- GSPO and CISPO (issue 20)
SEQUENCE_SCRIPT = (
    VERL_PRELUDE
    + r"""
mask = x["response_mask"].double()
adv = x["advantages"].unsqueeze(-1).expand(n, t)
low, high = x["clip"]
config = ca.ActorConfig(strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=1,
                        clip_ratio=low, clip_ratio_low=low,
                        clip_ratio_high=high)
fns = {"gspo": ca.compute_policy_loss_gspo, "cispo": ca.compute_policy_loss_cispo}
for name, fn in fns.items():
    for mode in x["aggregations"]:
        logp = x["logp"].clone().requires_grad_()
        loss, metrics = fn(x["old"], logp, adv, mask, loss_agg_mode=mode, config=config)
        loss.backward()
        out[f"{name}/{mode}/loss"] = loss.detach()
        out[f"{name}/{mode}/grad"] = logp.grad
        out[f"{name}/{mode}/clipfrac"] = torch.tensor(metrics["actor/pg_clipfrac"])
torch.save(out, sys.argv[2])
"""
)
CLIP = (0.2, 0.28)


@pytest.fixture(scope="module")
def verl_sequence_losses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """verl 0.9.1's GSPO and CISPO losses, gradients and clip fractions on ``inputs(1)``."""
    if not (VERL_DIR / "verl").is_dir():
        pytest.skip(f"verl 0.9.1 is not installed in {VERL_DIR} (run `make tools`)")
    tmp = tmp_path_factory.mktemp("verl-seq")
    torch.save({**inputs(1), "clip": CLIP}, tmp / "in.pt")
    return dict(run_verl(SEQUENCE_SCRIPT, tmp))


def sequence_loss_mismatches(verl: dict[str, torch.Tensor], name: str, loss_type: str) -> list[str]:
    """Where our ``loss_type`` differs from verl's ``name`` on ``inputs(1)``, over every
    aggregation: loss (CISPO's up to its gradient-free term, see algorithms/cispo.py), the
    gradient with respect to the log-probs, and the clip fraction. Empty: parity."""
    x = inputs(1)
    mask = x["response_mask"]
    t = mask.shape[-1]  # type: ignore[union-attr]
    adv = x["advantages"]
    wrong = []
    for mode in AGGREGATIONS:
        logp = x["logp"].clone().requires_grad_()  # type: ignore[union-attr]
        loss, metrics = compute_policy_loss(
            logp, x["old"], adv, mask,  # type: ignore[arg-type]
            config=PolicyLossConfig(clip_low=CLIP[0], clip_high=CLIP[1]), aggregation=mode,
            max_tokens=t, loss_type=loss_type,
        )  # fmt: skip
        loss.backward()
        value = loss.detach()
        if name == "cispo":  # verl's loss is on log pi, ours on log pi - old: add the constant
            old = x["old"]
            w = torch.exp(x["logp"] - old).clamp(1 - CLIP[0], 1 + CLIP[1])  # type: ignore[operator]
            token_mask, seq_mask = masks(mask, None, old.dtype)  # type: ignore[arg-type, union-attr]
            constant = -w * adv.unsqueeze(-1) * old  # type: ignore[union-attr]
            value = value + get_loss_aggregation(mode)(constant, token_mask, seq_mask, t)
        close = {"atol": 1e-10, "rtol": 1e-7}
        for what, ours, theirs in (
            ("loss", value, verl[f"{name}/{mode}/loss"]),
            ("grad", logp.grad, verl[f"{name}/{mode}/grad"]),
        ):
            try:
                torch.testing.assert_close(ours, theirs, **close)
            except AssertionError:
                wrong.append(f"{mode} {what}")
        frac = metrics["clip_ratio_low"] + metrics["clip_ratio_high"]
        if abs(frac - float(verl[f"{name}/{mode}/clipfrac"])) > 1e-6:
            wrong.append(f"{mode} clipfrac")
    return wrong


@pytest.mark.parametrize("name", ["gspo", "cispo"])
def test_gspo_and_cispo_match_verl(
    name: str, verl_sequence_losses: dict[str, torch.Tensor]
) -> None:
    assert sequence_loss_mismatches(verl_sequence_losses, name, name) == []


def test_a_broken_gspo_fails_the_parity_check(
    verl_sequence_losses: dict[str, torch.Tensor],
) -> None:
    """The check can fail: GSPO with the sequence's log-ratio summed instead of averaged (the
    unnormalised sequence ratio, the paper's named pitfall) differs from verl everywhere."""
    from agpo_api.catalog import PolicyLossTraits
    from agpo_trainer.algorithms import POLICY_LOSSES, register_policy_loss
    from agpo_trainer.algorithms.losses import clipped_surrogate

    def broken(log_ratio, advantages, token_mask, config):  # type: ignore[no-untyped-def]
        seq = (log_ratio * (token_mask > 0)).sum(-1, keepdim=True).detach()
        log_s = (log_ratio - log_ratio.detach() + seq).clamp(max=10.0)
        return clipped_surrogate(torch.exp(log_s), advantages, config.clip_low, config.clip_high)

    with POLICY_LOSSES.scope():
        register_policy_loss("gspo_broken", traits=PolicyLossTraits())(broken)
        wrong = sequence_loss_mismatches(verl_sequence_losses, "gspo", "gspo_broken")
    assert len(wrong) >= len(AGGREGATIONS), wrong
