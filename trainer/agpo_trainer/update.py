"""The policy update, on every rank: one rollout batch, ``training.epochs`` passes of
``training.miniBatches`` optimizer steps each (verl's ppo_epochs / ppo_mini_batch_size, TRL's
num_iterations / steps_per_generation).

Mini-batch ``k`` of a step is the ``k``-th equal, contiguous part of *every* rank's slice, so
the ranks step together. Within it the loss (``algorithm.policyLoss``) is computed in
micro-batches, each weighted by its share of the mini-batch's global denominator (over all
ranks), so an optimizer step does not depend on the world size or the micro-batch size. Old
log-probs are always the rollout's: from the second optimizer step on the policy has moved, the
importance ratio leaves 1 and the clip acts. With ``algorithm.rolloutCorrection`` on, the old
log-probs are instead the trainer's own, recomputed once per batch before its first update
(:func:`trainer_logprobs`), and the rollout's weight each token's loss
(:mod:`agpo_trainer.algorithms.correction`). A policy loss whose traits say it needs whole
groups (GVPO: each prompt's responses in the same gradient step) gets micro-batches cut at group
boundaries, and the spec makes rank slices and mini-batches whole groups.

A micro-batch is ``AGPO_MICRO_BATCH_SIZE`` sequences (default 64), or with
``trainer.microBatchTokens`` as many consecutive sequences (whole groups where needed) as fit
that many padded tokens; either way each is weighted by its share of the global denominator,
so the update is the same whatever the cut (``tests/trainer/test_micro_batch_tokens.py``).
Log-probs and entropy are computed ``trainer.logprobChunkTokens`` response positions at a time
(``policy.response_logprobs``).

The LR scheduler steps once per rollout batch (as verl), not per optimizer step, so
``training.steps``, ``warmupSteps`` and the schedule count rollout steps whatever
``miniBatches``/``epochs`` are. With the defaults 1/1 this is one optimizer step per batch,
exactly as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from agpo_api.metrics_table import reduction
from agpo_api.resolved import ResolvedSpec
from agpo_trainer.algorithms import (
    Counts,
    PolicyLossConfig,
    accumulate,
    compute_policy_loss,
    count_included,
    micro_batch_share,
    rank_loss,
)
from agpo_trainer.distributed import all_reduce_metrics
from agpo_trainer.experience import Batch
from agpo_trainer.policy import Policy, Responses, response_logprobs
from agpo_trainer.stats import UpdateStats, combine_steps


def micro_batches(n: int, size: int, align: int = 1) -> list[range]:
    """Consecutive index ranges covering ``range(n)``, each at most ``size`` long, rounded down
    to a multiple of ``align`` (but at least ``align``) so no group of ``align`` rows is cut."""
    step = max(align, size // align * align)
    return [range(i, min(i + step, n)) for i in range(0, n, step)]


def token_micro_batches(lengths: Sequence[int], budget: int, align: int = 1) -> list[range]:
    """Consecutive index ranges covering ``range(len(lengths))``, cut between whole groups of
    ``align`` rows, each as long as its padded size ``rows x longest sequence`` stays within
    ``budget`` tokens (``trainer.microBatchTokens``); a group over the budget on its own is
    one micro-batch. ``lengths`` are prompt + completion tokens per row.

    The padded size is the budget because the micro-batch is one right-padded forward pass:
    its activations grow with ``rows x longest``, not with the sum of the lengths."""
    out: list[range] = []
    start, longest = 0, 0
    for g in range(0, len(lengths), align):
        group = range(g, min(g + align, len(lengths)))
        wider = max(longest, *(lengths[i] for i in group))
        if g > start and (group.stop - start) * wider > budget:
            out.append(range(start, g))
            start, wider = g, max(lengths[i] for i in group)
        longest = wider
    if len(lengths) > start:
        out.append(range(start, len(lengths)))
    return out


def split_to(parts: list[range], count: int, align: int = 1) -> list[range]:
    """``parts`` cut further, the one with the most rows in halves (of whole groups of
    ``align``) each time, until there are ``count`` of them (or no part has two groups)."""
    out = list(parts)
    while len(out) < count:
        i = max(range(len(out)), key=lambda j: len(out[j]))
        part = out[i]
        if len(part) < 2 * align:
            break
        mid = part.start + len(part) // (2 * align) * align
        out[i : i + 1] = [range(part.start, mid), range(mid, part.stop)]
    return out


def rank_token_micro_batches(
    lengths_by_rank: Sequence[Sequence[int]], rank: int, budget: int, align: int = 1
) -> list[range]:
    """``rank``'s token-budget cut of its rows, with as many micro-batches as the rank that
    needs the most: FSDP2 all-gathers and reduce-scatters in every micro-batch's forward and
    backward, so every rank must run the same number (a rank with fewer would wait forever).
    Every rank holds the whole batch, so each computes all the cuts: no collective needed."""
    cuts = [token_micro_batches(lengths, budget, align) for lengths in lengths_by_rank]
    return split_to(cuts[rank], max(len(c) for c in cuts), align)


def mini_batch_counts(
    lengths: Sequence[int], sample_mask: Sequence[bool], world_size: int, mini_batches: int
) -> list[Counts]:
    """The global denominators of each mini-batch: mini-batch ``k`` is the ``k``-th part of
    every rank's slice (rank ``r`` holds rows ``[r*n/W, (r+1)*n/W)``)."""
    n = len(lengths)
    per_rank = n // world_size
    per_mini = per_rank // mini_batches
    out = []
    for k in range(mini_batches):
        rows = [r * per_rank + k * per_mini + j for r in range(world_size) for j in range(per_mini)]
        out.append(count_included([lengths[i] for i in rows], [sample_mask[i] for i in rows]))
    return out


def train_step(
    policy: Policy, batch: Batch, spec: ResolvedSpec, *, rank: int, world_size: int, micro: int
) -> UpdateStats:
    """``epochs x miniBatches`` optimizer steps on this rank's slice of ``batch``, then one LR
    step; the statistics are the mean over the optimizer steps."""
    algo, t = spec.algorithm, spec.training
    mine = batch.shard(rank, world_size)
    minis = t.mini_batches
    per = len(mine) // minis
    align = algo.group_align
    if per * minis != len(mine) or per % align:
        raise ValueError(
            f"a rank's {len(mine)} completions do not split into {minis} mini-batches of whole "
            f"groups of {align}; check training.promptsPerStep against miniBatches and the "
            f"world size"
        )
    totals = mini_batch_counts(
        [len(c) for c in batch.completion_ids], batch.sample_mask, world_size, minis
    )
    policy.model.train()
    rollout: list[list[float]] | None = None
    if algo.rollout_correction.mode != "none":
        rollout = mine.old_logprobs
        own = trainer_logprobs(policy, batch, mine, spec, rank=rank, world_size=world_size,
                               micro=micro)  # fmt: skip
        mine = dataclasses.replace(mine, old_logprobs=own)
    steps: list[dict[str, float]] = []
    norms: list[float] = []
    for _ in range(t.epochs):
        for k in range(minis):
            rows = range(k * per, (k + 1) * per)
            parts = micro_batch_cut(
                batch, rows, spec, rank=rank, world_size=world_size, micro=micro
            )
            metrics, norm = optimizer_step(
                policy, mine, rows, parts, totals[k], spec, world_size=world_size, rollout=rollout
            )
            steps.append(metrics)
            norms.append(norm)
    policy.scheduler.step()
    return UpdateStats.from_loss_metrics(
        combine_steps(steps),
        grad_norm=sum(norms) / len(norms),
        learning_rate=policy.scheduler.get_last_lr()[0],
    )


def trainer_logprobs(
    policy: Policy, batch: Batch, mine: Batch, spec: ResolvedSpec, *, rank: int,
    world_size: int, micro: int,
) -> list[list[float]]:  # fmt: skip
    """The log-probs of this rank's completions under the policy as it is now (the weights
    that generated them, or one version newer with ``maxStaleness: 1``), by the trainer's own
    forward pass: no gradient, chunked, in the update's micro-batch cut (the same count on
    every rank, as FSDP2 needs), in the mode the update runs in."""
    temperature = spec.training.temperature
    chunk_tokens = spec.trainer.logprob_chunk_tokens
    out: list[list[float]] = []
    parts = micro_batch_cut(batch, range(len(mine)), spec, rank=rank, world_size=world_size,
                            micro=micro)  # fmt: skip
    with torch.no_grad():
        for idx in parts:
            x = Responses.build(
                [mine.prompt_ids[i] for i in idx],
                [mine.completion_ids[i] for i in idx],
                policy.pad_id,
                policy.device,
            )
            logp, _ = response_logprobs(policy.model, x, temperature, chunk_tokens=chunk_tokens)
            rows = logp.float().tolist()
            out += [rows[r][: len(mine.completion_ids[i])] for r, i in enumerate(idx)]
    return out


def _padded(
    values: list[list[float]], idx: range, shape: torch.Size, device: torch.device
) -> torch.Tensor:
    """Per-row float lists of ``idx`` right-padded with 0 into ``shape`` ``[B, T]``."""
    out = torch.zeros(shape, dtype=torch.float32, device=device)
    for r, i in enumerate(idx):
        out[r, : len(values[i])] = torch.tensor(values[i])
    return out


def micro_batch_cut(
    batch: Batch, rows: range, spec: ResolvedSpec, *, rank: int, world_size: int, micro: int
) -> list[range]:
    """How ``rows`` of this rank's slice are cut into micro-batches (ranges relative to
    ``rows``): ``micro`` sequences each, or by ``trainer.microBatchTokens`` with the same count
    on every rank; whole groups where the policy loss needs them."""
    align = spec.algorithm.group_align
    budget = spec.trainer.micro_batch_tokens
    if budget is None:
        return micro_batches(len(rows), micro, align)
    per_rank = len(batch) // world_size
    sizes = [len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids, strict=True)]
    # every rank's rows of this mini-batch: rank r's slice starts at r * per_rank
    lengths = [
        sizes[r * per_rank + rows.start : r * per_rank + rows.stop] for r in range(world_size)
    ]
    return rank_token_micro_batches(lengths, rank, budget, align)


def optimizer_step(
    policy: Policy,
    mine: Batch,
    rows: range,
    parts: list[range],
    total: Counts,
    spec: ResolvedSpec,
    *,
    world_size: int,
    rollout: list[list[float]] | None = None,
) -> tuple[dict[str, float], float]:
    """One optimizer step on ``rows`` of this rank's slice, in the micro-batches ``parts``
    (relative to ``rows``): the whole mini-batch's metrics, summed over ranks, and the
    gradient norm before clipping. ``rollout``: the engine's log-probs of this rank's rows
    when ``mine.old_logprobs`` are the trainer's own (rollout correction)."""
    algo, device = spec.algorithm, policy.device
    config = PolicyLossConfig.of(algo)
    temperature = spec.training.temperature
    chunk_tokens = spec.trainer.logprob_chunk_tokens
    policy.optimizer.zero_grad(set_to_none=True)
    summed: dict[str, float] = {}
    chunks = [range(rows.start + c.start, rows.start + c.stop) for c in parts]
    for k, idx in enumerate(chunks):
        x = Responses.build(
            [mine.prompt_ids[i] for i in idx],
            [mine.completion_ids[i] for i in idx],
            policy.pad_id,
            device,
        )
        old = _padded(mine.old_logprobs, idx, x.tokens.shape, device)
        behaviour = None if rollout is None else _padded(rollout, idx, x.tokens.shape, device)
        sample_mask = [mine.sample_mask[i] for i in idx]
        with policy.no_sync(skip=k < len(chunks) - 1):
            logp, entropy = response_logprobs(
                policy.model, x, temperature, chunk_tokens=chunk_tokens, with_entropy=True
            )
            ref = None
            if policy.ref_model is not None:
                with torch.no_grad():
                    ref, _ = response_logprobs(
                        policy.ref_model, x, temperature, chunk_tokens=chunk_tokens
                    )
            loss, metrics = compute_policy_loss(
                logp,
                old,
                torch.tensor([mine.advantages[i] for i in idx], device=device),
                x.mask,
                config=config,
                ref_logprobs=ref,
                kl_coef=algo.kl_coefficient,
                aggregation=algo.loss_aggregation,
                sample_mask=torch.tensor(sample_mask, device=device),
                max_tokens=spec.training.max_completion_tokens,
                entropy=entropy,
                loss_type=algo.policy_loss,
                rollout_logprobs=behaviour,
                correction=algo.rollout_correction,
            )
            local = count_included([len(mine.completion_ids[i]) for i in idx], sample_mask)
            share = micro_batch_share(algo.loss_aggregation, local, total)
            rank_loss(loss, share, world_size).backward()
        accumulate(summed, metrics, share)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        policy.model.parameters(), spec.training.max_grad_norm
    )
    policy.optimizer.step()
    return all_reduce_metrics(summed, reduction, device), float(grad_norm)
