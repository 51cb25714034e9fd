"""Under DDP and FSDP2 (2 gloo ranks) the memory-bounded loss step (chunked log-probs inside
the wrapped module's forward, a token budget per micro-batch, gradient checkpointing) gives
the parameters a single process gets with the plain settings: the wrappers' hooks see the
lm_head, and the update stays independent of world size and micro-batching."""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_micro_batch_tokens import varied_batch
from test_update import PROMPTS, G, tiny_model

from agpo_api import parse_job
from agpo_api.resolved import resolve
from agpo_trainer.policy import Policy
from agpo_trainer.runtime import Runtime
from agpo_trainer.update import train_step

from agpo_testlib import MINIMAL

BOUNDED = {"microBatchTokens": 20, "logprobChunkTokens": 3, "gradientCheckpointing": True}


def policy(world_size: int, rank: int, trainer: dict[str, Any]) -> Policy:
    doc = copy.deepcopy(MINIMAL)
    # one mini-batch: mini-batch k is the k-th part of *every rank's* slice, so with two it
    # would hold other rows on 2 ranks than in 1 process; epochs repeat it (the ratio moves)
    doc["spec"]["model"] = {**doc["spec"]["model"], "dtype": "float32"}  # exact comparisons
    doc["spec"]["training"] = {"promptsPerStep": PROMPTS, "epochs": 2}
    doc["spec"]["algorithm"] = {"groupSize": G}
    doc["spec"].setdefault("trainer", {}).update(trainer)
    rt = Runtime(
        rank=rank, world_size=world_size, local_rank=rank, rollout_urls=[], rollout_token=None,
        checkpoint_dir=Path("/nonexistent"), metrics_port=None, weight_sync_host=None,
        weight_sync_port=0, cache_dir=Path("/nonexistent"), base_dir=None,
    )  # fmt: skip
    tokenizer = type("Tok", (), {"pad_token_id": 0})()
    p = Policy(
        resolve(parse_job(doc).spec), rt, model_dir="", tokenizer=tokenizer, model=tiny_model(),
        device=torch.device("cpu"),
    )  # fmt: skip
    # SGD: AdamW would turn rounding noise on exactly-zero gradients into +-lr steps
    p.optimizer = torch.optim.SGD(p.model.parameters(), lr=0.5)
    p.scheduler = torch.optim.lr_scheduler.LambdaLR(p.optimizer, lambda _: 1.0)
    return p


def _rank(rank: int, tmp: str, strategy: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
    done = False
    try:
        batch = pickle.loads((Path(tmp) / "batch.pkl").read_bytes())
        p = policy(2, rank, {"strategy": strategy, **BOUNDED})
        train_step(p, batch, p.spec, rank=rank, world_size=2, micro=64)
        weights = p.gather_weights()  # a collective under FSDP
        if rank == 0:
            state = weights if weights is not None else p.module.state_dict()
            torch.save({k: v.detach().cpu() for k, v in state.items()}, Path(tmp) / "out.pt")
        dist.barrier()  # both ranks past every collective before either tears down
        done = True
    finally:
        dist.destroy_process_group()
    if done:
        # The interpreter's teardown of a gloo process aborts now and then ("terminate called
        # without an active exception", SIGABRT; 1 in ~6 runs, before issue 20's changes too):
        # the work is saved, so leave without it.
        os._exit(0)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_bounded_match_one_process_plain(tmp_path: Path, strategy: str) -> None:
    single = policy(1, 0, {})
    batch = varied_batch(single)
    (tmp_path / "batch.pkl").write_bytes(pickle.dumps(batch))
    train_step(single, batch, single.spec, rank=0, world_size=1, micro=64)
    want = single.module.state_dict()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(_rank, args=(str(tmp_path), strategy), nprocs=2, start_method="spawn")
    got = torch.load(tmp_path / "out.pt")
    assert got.keys() == want.keys()
    start, moved = tiny_model().state_dict(), 0
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, rtol=1e-4, atol=1e-6, msg=name)
        moved += int(not torch.equal(w, start[name]))
    assert moved > len(want) // 2  # the step did train (else equality proves nothing)
