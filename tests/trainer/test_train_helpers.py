"""Pure pieces of the training loop: resample selection, sharding, LR schedule, padding."""

from __future__ import annotations

import torch

from agpo_api.models import AGPOJobSpec
from agpo_api.resolved import ResolvedSpec, resolve
from agpo_trainer.experience import Batch, select_groups
from agpo_trainer.policy import pad
from agpo_trainer.schedule import lr_lambda


def test_select_groups_prefers_groups_with_variance_and_keeps_draw_order() -> None:
    # 5 groups of 2: groups 1 and 3 have variance
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert select_groups(rewards, 2, 2) == [1, 3]
    assert select_groups(rewards, 2, 3) == [0, 1, 3]  # filled with the first homogeneous one
    assert select_groups(rewards, 2, 5) == [0, 1, 2, 3, 4]


def batch(n: int) -> Batch:
    return Batch(
        prompt_ids=[[1]] * n,
        completion_ids=[[2] * (i + 1) for i in range(n)],
        old_logprobs=[[0.0] * (i + 1) for i in range(n)],
        advantages=[float(i) for i in range(n)],
        sample_mask=[i % 3 != 0 for i in range(n)],
        example_indices=[0],
    )


def test_batch_shards_are_equal_contiguous_slices_and_counts_are_global() -> None:
    b = batch(8)
    shards = [b.shard(r, 2) for r in range(2)]
    assert [s.advantages for s in shards] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # included tokens / sequences of the whole batch: rows 1,2,4,5,7 (lengths 2,3,5,6,8)
    assert b.valid_counts() == (24, 5)


def spec(**training: object) -> ResolvedSpec:
    return resolve(
        AGPOJobSpec.model_validate(
            {"model": {"name": "m"}, "dataset": {"source": {"builtin": {}}}, "training": training}
        )
    )


def test_lr_schedules() -> None:
    f = lr_lambda(spec(steps=10, warmupSteps=2, lrSchedule="linear"))
    assert [round(f(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    g = lr_lambda(spec(steps=10, warmupSteps=0, lrSchedule="cosine"))
    assert g(0) == 1.0 and abs(g(5) - 0.5) < 1e-9 and abs(g(10)) < 1e-9
    assert lr_lambda(spec(steps=10))(7) == 1.0


def test_pad_right_pads_with_mask() -> None:
    ids, attn = pad([[5, 6, 7], [8]], 0, torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert attn.tolist() == [[1, 1, 1], [1, 0, 0]]
