"""The KL reference model exists on every rank, also on nodes that do not share rank 0's
checkpoint directory (simulated: each rank gets its own), and survives a resume."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from agpo_api.models import AGPOJobSpec
from agpo_api.resolved import resolve
from agpo_trainer.runtime import Runtime

SPEC = {
    "model": {"name": "builtin:tiny", "dtype": "float32"},
    "dataset": {"source": {"builtin": {"size": 8}}},
    "algorithm": {"klCoefficient": 0.1},
    "training": {"maxPromptTokens": 16, "maxCompletionTokens": 8},
    "trainer": {"procsPerNode": 2, "gpusPerNode": 0},
    "rollout": {"gpusPerReplica": 0, "maxModelLen": 64, "weightSync": {"backend": "gloo"}},
}


def _rank(rank: int, tmp: str, resumed: bool) -> None:
    from agpo_trainer.policy import Policy

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/store-{resumed}", rank=rank, world_size=2
    )
    try:
        spec = resolve(AGPOJobSpec.model_validate(SPEC))
        rt = Runtime(
            rank=rank, world_size=2, local_rank=rank, rollout_urls=["http://x"],
            rollout_token=None, checkpoint_dir=Path(tmp) / f"node{rank}", metrics_port=None,
            weight_sync_host=None, weight_sync_port=0, cache_dir=Path(tmp) / "cache",
            base_dir=None,
        )  # fmt: skip
        policy = Policy.load(spec, rt)
        with torch.no_grad():  # the policy moved on (warm-up, training): 1 first, 2 on resume
            for p in policy.module.parameters():
                p.add_(2.0 if resumed else 1.0)
        policy.load_reference(rt.checkpoint_dir / "reference", resumed=resumed)
        assert policy.ref_model is not None
        torch.save(policy.ref_model.state_dict(), Path(tmp) / f"ref{rank}-{resumed}.pt")
    finally:
        dist.destroy_process_group()


def run_two_ranks(tmp_path: Path, resumed: bool) -> list[dict[str, torch.Tensor]]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(_rank, args=(str(tmp_path), resumed), nprocs=2, start_method="spawn")
    return [torch.load(tmp_path / f"ref{r}-{resumed}.pt") for r in (0, 1)]


@pytest.mark.slow
def test_every_rank_gets_rank_0s_reference_without_a_shared_directory(tmp_path: Path) -> None:
    ref0, ref1 = run_two_ranks(tmp_path, resumed=False)
    assert ref0.keys() == ref1.keys()
    for name in ref0:
        torch.testing.assert_close(ref0[name], ref1[name], rtol=0, atol=0, msg=name)
    # only rank 0 wrote it; rank 1's "node" never had it
    assert (tmp_path / "node0" / "reference" / "config.json").is_file()
    assert not (tmp_path / "node1" / "reference").exists()

    # A resume keeps the saved reference (the initial RL policy), not the resumed weights:
    # the run above froze the weights + 1, this one has the weights + 2, yet both ranks get
    # the saved one.
    again0, again1 = run_two_ranks(tmp_path, resumed=True)
    for name in ref0:
        torch.testing.assert_close(again0[name], ref0[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(again1[name], ref0[name], rtol=0, atol=0, msg=name)
