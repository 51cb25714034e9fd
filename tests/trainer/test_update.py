"""Several updates per rollout batch (training.miniBatches / epochs) with a tiny real model:
the importance ratio leaves 1 and the clip acts; 1/1 is one optimizer step as before."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from agpo_api import parse_job
from agpo_api.resolved import resolve
from agpo_trainer.experience import Batch
from agpo_trainer.policy import Policy, Responses, response_logprobs
from agpo_trainer.runtime import Runtime
from agpo_trainer.update import micro_batches, mini_batch_counts, train_step

from agpo_testlib import MINIMAL

VOCAB, G, PROMPTS, T = 32, 4, 4, 6


def tiny_model() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    return Qwen2ForCausalLM(config)


def make_policy(
    training: dict[str, Any],
    algorithm: dict[str, Any] | None = None,
    trainer: dict[str, Any] | None = None,
) -> Policy:
    doc = copy.deepcopy(MINIMAL)
    doc["spec"]["model"] = {**doc["spec"]["model"], "dtype": "float32"}  # exact comparisons
    doc["spec"]["training"] = {"learningRate": 0.05, "promptsPerStep": PROMPTS, **training}
    doc["spec"]["algorithm"] = {"groupSize": G, **(algorithm or {})}
    doc["spec"].setdefault("trainer", {}).update(trainer or {})
    spec = resolve(parse_job(doc).spec)
    rt = Runtime(
        rank=0, world_size=1, local_rank=0, rollout_urls=[], rollout_token=None,
        checkpoint_dir=Path("/nonexistent"), metrics_port=None, weight_sync_host=None,
        weight_sync_port=0, cache_dir=Path("/nonexistent"), base_dir=None,
    )  # fmt: skip
    tokenizer = type("Tok", (), {"pad_token_id": 0})()
    return Policy(
        spec, rt, model_dir="", tokenizer=tokenizer, model=tiny_model(),
        device=torch.device("cpu"),
    )  # fmt: skip


def rollout_batch(policy: Policy) -> Batch:
    """A batch sampled from the policy itself (old log-probs = the policy's, ratio 1)."""
    g = torch.Generator().manual_seed(1)
    n = PROMPTS * G
    prompts = [[1 + (i // G), 2] for i in range(n)]
    completions = [torch.randint(3, VOCAB, (T,), generator=g).tolist() for _ in range(n)]
    x = Responses.build(prompts, completions, 0, policy.device)
    with torch.no_grad():
        old, _ = response_logprobs(policy.model, x, 1.0)
    advantages = torch.randn(n, generator=g).tolist()
    return Batch(
        prompt_ids=prompts,
        completion_ids=completions,
        old_logprobs=[row.tolist() for row in old],
        advantages=advantages,
        sample_mask=[True] * n,
        example_indices=list(range(PROMPTS)),
    )


def test_one_mini_batch_one_epoch_is_one_step_at_ratio_one() -> None:
    policy = make_policy({})
    stats = train_step(policy, rollout_batch(policy), policy.spec, rank=0, world_size=1, micro=64)
    assert stats.ratio_mean == pytest.approx(1.0, abs=1e-5)
    assert stats.clip_ratio == 0.0
    assert policy.optimizer.state_dict()["state"][0]["step"] == 1
    assert policy.scheduler.last_epoch == 1


def test_mini_batches_and_epochs_make_the_clip_act() -> None:
    policy = make_policy({"miniBatches": 2, "epochs": 3})
    batch = rollout_batch(policy)
    stats = train_step(policy, batch, policy.spec, rank=0, world_size=1, micro=3)
    # 2 x 3 optimizer steps, one LR step (the schedule counts rollout steps)
    assert policy.optimizer.state_dict()["state"][0]["step"] == 6
    assert policy.scheduler.last_epoch == 1
    assert stats.clip_ratio > 0.0
    assert stats.ratio_mean != pytest.approx(1.0, abs=1e-4)


def test_gvpo_micro_batches_keep_groups_whole() -> None:
    assert micro_batches(16, 6, align=4) == [range(0, 4), range(4, 8), range(8, 12), range(12, 16)]
    assert micro_batches(16, 3, align=4)[0] == range(0, 4)
    assert micro_batches(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    policy = make_policy({"miniBatches": 2}, {"preset": "gvpo"})
    stats = train_step(policy, rollout_batch(policy), policy.spec, rank=0, world_size=1, micro=3)
    assert stats.clip_ratio == 0.0 and stats.grad_norm > 0


def test_mini_batch_counts_are_global_per_mini_batch() -> None:
    lengths = [1, 2, 3, 4, 5, 6, 7, 8]
    mask = [True] * 7 + [False]
    # 2 ranks x 2 mini-batches: mini 0 = rows 0,1 (rank 0) and 4,5 (rank 1)
    counts = mini_batch_counts(lengths, mask, world_size=2, mini_batches=2)
    assert [(c.tokens, c.sequences) for c in counts] == [(1 + 2 + 5 + 6, 4), (3 + 4 + 7, 3)]
