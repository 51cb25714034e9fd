"""The policy update, on every rank: the clipped policy loss on this rank's slice of the batch
in micro-batches, each weighted by its share of the global denominator (so the update does not
depend on the world size or the micro-batch size), backward, clip, AdamW and LR step.
"""

from __future__ import annotations

import torch

from agpo_api.models import AGPOJobSpec
from agpo_trainer.algorithms import (
    accumulate,
    compute_policy_loss,
    count_included,
    micro_batch_share,
    rank_loss,
)
from agpo_trainer.distributed import all_reduce_sum
from agpo_trainer.experience import Batch
from agpo_trainer.policy import Policy, Responses, response_logprobs
from agpo_trainer.stats import UpdateStats


def micro_batches(n: int, size: int) -> list[range]:
    """Consecutive index ranges of at most ``size`` covering ``range(n)``."""
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def train_step(
    policy: Policy, batch: Batch, spec: AGPOJobSpec, *, rank: int, world_size: int, micro: int
) -> UpdateStats:
    """Loss, backward and optimizer step on this rank's slice of ``batch``."""
    algo, device = spec.algorithm, policy.device
    temperature = spec.training.temperature
    total = batch.valid_counts()  # the whole batch's: every rank divides by the same
    mine = batch.shard(rank, world_size)
    policy.model.train()
    policy.optimizer.zero_grad(set_to_none=True)
    summed: dict[str, float] = {}
    chunks = micro_batches(len(mine), micro)
    for k, idx in enumerate(chunks):
        x = Responses.build(
            [mine.prompt_ids[i] for i in idx],
            [mine.completion_ids[i] for i in idx],
            policy.pad_id,
            device,
        )
        old = torch.zeros(x.tokens.shape, dtype=torch.float32, device=device)
        for r, i in enumerate(idx):
            old[r, : len(mine.completion_ids[i])] = torch.tensor(mine.old_logprobs[i])
        sample_mask = [mine.sample_mask[i] for i in idx]
        with policy.no_sync(skip=k < len(chunks) - 1):
            logp, logits = response_logprobs(policy.model, x, temperature)
            ref = None
            if policy.ref_model is not None:
                with torch.no_grad():
                    ref, _ = response_logprobs(policy.ref_model, x, temperature)
            loss, metrics = compute_policy_loss(
                logp,
                old,
                torch.tensor([mine.advantages[i] for i in idx], device=device),
                x.mask,
                clip_low=algo.clip.low,
                clip_high=algo.clip.high,
                ref_logprobs=ref,
                kl_coef=algo.kl_coefficient,
                aggregation=algo.loss_aggregation,
                sample_mask=torch.tensor(sample_mask, device=device),
                max_tokens=spec.training.max_completion_tokens,
                logits=logits.detach(),
            )
            local = count_included([len(mine.completion_ids[i]) for i in idx], sample_mask)
            share = micro_batch_share(algo.loss_aggregation, local, total)
            rank_loss(loss, share, world_size).backward()
        accumulate(summed, metrics, share)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        policy.model.parameters(), spec.training.max_grad_norm
    )
    policy.optimizer.step()
    policy.scheduler.step()
    summed = all_reduce_sum(summed, device)
    return UpdateStats.from_loss_metrics(
        summed, grad_norm=float(grad_norm), learning_rate=policy.scheduler.get_last_lr()[0]
    )
