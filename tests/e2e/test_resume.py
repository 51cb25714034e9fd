"""A trainer killed after a checkpoint resumes where it was, as if never interrupted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from agpo_trainer.checkpoint import STATE_FILE, latest_checkpoint
from agpo_trainer.rollout.server import VLLMServer

from e2e_support import job_file

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_killed_trainer_resumes_with_same_data_order_and_optimizer_state(
    tmp_path: Path, vllm_server: VLLMServer, start_trainer: Any
) -> None:
    job = job_file(tmp_path, training__steps=6)
    urls, token = [vllm_server.url], vllm_server.token

    # Reference: an uninterrupted run.
    ref = start_trainer(job, urls, token, tmp_path / "ref")
    assert ref.wait() == 0, ref.text()[-3000:]
    ref_steps = {s["step"]: s for s in ref.steps()}

    # Interrupted run: right after step 3 the whole torchrun group is SIGKILLed (the
    # trainer's fault-injection hook), so step 3's work is lost and step 2's checkpoint
    # is the newest.
    ckpts = tmp_path / "cut" / "checkpoints"
    first = start_trainer(job, urls, token, tmp_path / "cut", AGPO_CRASH_AFTER_STEP="3")
    assert first.wait() != 0
    assert [s["step"] for s in first.steps()] == [1, 2, 3]
    killed_at = latest_checkpoint(ckpts)
    assert killed_at is not None and killed_at.name == "step-000002"

    second = start_trainer(job, urls, token, tmp_path / "cut")
    assert second.wait() == 0, second.text()[-3000:]
    assert "resumed from" in second.text() and "at step 2" in second.text()
    resumed = second.steps()
    assert [s["step"] for s in resumed] == [3, 4, 5, 6]
    # Same prompts in the same order, and the same outcomes, step for step.
    for s in resumed:
        assert s["prompts"] == ref_steps[s["step"]]["prompts"], (
            f"data order differs at step {s['step']}"
        )
        assert s["rewardMean"] == pytest.approx(ref_steps[s["step"]]["rewardMean"])

    a = latest_checkpoint(tmp_path / "ref" / "checkpoints")
    b = latest_checkpoint(ckpts)
    assert a is not None and b is not None and a.name == b.name == "step-000006"
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5, msg=name)
    opt_a = torch.load(a / STATE_FILE, weights_only=False)["optimizer"]["state"]
    opt_b = torch.load(b / STATE_FILE, weights_only=False)["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for k in opt_a:
        assert int(opt_a[k]["step"]) == int(opt_b[k]["step"]) == 6
        torch.testing.assert_close(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"], rtol=1e-4, atol=1e-6)
