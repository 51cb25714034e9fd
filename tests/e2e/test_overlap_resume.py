"""Kill and resume with overlapped rollouts (maxStaleness 1): no batch lost, none trained twice.

The trainer is SIGKILLed right after step 3 (AGPO_CRASH_AFTER_STEP) while step 4's batch is
being prefetched; the newest checkpoint is step 2's, written while step 3's batch was
prefetched but not trained. Its sampler cursor is before that batch's draws, so the resumed
run generates step 3 again: the prompts of every step equal an uninterrupted run's, and the
optimizer has taken exactly one step per batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from agpo_trainer.checkpoint import STATE_FILE, latest_checkpoint, list_checkpoints
from agpo_trainer.rollout.server import VLLMServer

from e2e_support import job_file

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PER_STEP = 8  # TINY_JOB's promptsPerStep


def test_killed_overlapped_run_resumes_without_losing_or_doubling_a_batch(
    tmp_path: Path, vllm_server: VLLMServer, start_trainer: Any
) -> None:
    job = job_file(tmp_path, training__steps=6, training__maxStaleness=1)
    urls, token = [vllm_server.url], vllm_server.token

    ref = start_trainer(job, urls, token, tmp_path / "ref")
    assert ref.wait() == 0, ref.text()[-3000:]
    ref_prompts = {s["step"]: s["prompts"] for s in ref.steps()}
    assert sorted(ref_prompts) == [1, 2, 3, 4, 5, 6]

    ckpts = tmp_path / "cut" / "checkpoints"
    first = start_trainer(job, urls, token, tmp_path / "cut", AGPO_CRASH_AFTER_STEP="3")
    assert first.wait() != 0
    assert [s["step"] for s in first.steps()] == [1, 2, 3]
    killed_at = latest_checkpoint(ckpts)
    assert killed_at is not None and killed_at.name == "step-000002"
    # step 2's cursor: 2 batches drawn, not the prefetched third
    cursor = torch.load(killed_at / STATE_FILE, weights_only=False)["sampler"]
    assert (cursor["epoch"], cursor["position"]) == (0, 2 * PER_STEP)

    second = start_trainer(job, urls, token, tmp_path / "cut")
    assert second.wait() == 0, second.text()[-3000:]
    assert "at step 2" in second.text()
    resumed = second.steps()
    assert [s["step"] for s in resumed] == [3, 4, 5, 6]
    # the first batch after a resume comes from the checkpoint's weights (its older
    # generator is gone), then the pipeline is one step behind again
    assert [s["batchStaleness"] for s in resumed] == [0, 1, 1, 1]

    # The batches the final model was trained on, step by step: steps 1-2 of the first run
    # (in its checkpoint), 3-6 of the second. Each is the uninterrupted run's.
    trained = {s["step"]: s["prompts"] for s in first.steps() if s["step"] <= 2}
    trained |= {s["step"]: s["prompts"] for s in resumed}
    assert trained == ref_prompts
    flat = [i for step in sorted(trained) for i in trained[step]]
    assert len(flat) == 6 * PER_STEP == len(set(flat))  # 48 distinct rows of 500: none twice

    # one optimizer step per batch: 6, as in the uninterrupted run
    final = list_checkpoints(ckpts)[-1]
    assert final.name == "step-000006"
    for ckpt in (final, latest_checkpoint(tmp_path / "ref" / "checkpoints")):
        assert ckpt is not None
        opt = torch.load(ckpt / STATE_FILE, weights_only=False)["optimizer"]["state"]
        assert {int(v["step"]) for v in opt.values()} == {6}
