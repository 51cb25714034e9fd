"""The AGPO training loop, one process per torchrun rank.

Per step: rank 0 draws prompts, asks the vLLM servers for ``groupSize`` completions each,
scores them and computes advantages (:mod:`agpo_trainer.experience`); the batch is broadcast
and every rank trains on an equal slice, with the loss weighted to the global denominator so
the update does not depend on the world size (:mod:`agpo_trainer.update`); DDP/FSDP averages
the gradients, the optimizer steps, and rank 0 pushes the new weights into every vLLM server.

With ``training.maxStaleness: 1`` rank 0 generates the next step's batch on a thread while
every rank trains, and pushes the new weights once that generation is done
(:mod:`agpo_trainer.overlap` decides when; the loop reads the same either way).

Rank 0's duties besides its slice: the rollout backend (generation and weight pushes), the
metrics and ``/status`` server, the log line of each step, the callbacks, and writing
checkpoints (every rank joins the gathering under FSDP).

The rollout backend is a parameter (:class:`agpo_trainer.rollout.backend.RolloutBackend`): the
vLLM servers by default (:func:`agpo_trainer.rollout.backend.connect`), or a served copy of
the policy in this process (:class:`agpo_trainer.rollout.inprocess.InProcessBackend`), which is
how the study, the learnability gate and tests run this very loop.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from typing import Any

import torch
from torch import Tensor

from agpo_api.models import AGPOJob
from agpo_api.progress import TrainerProgress
from agpo_api.resolved import ResolvedSpec, resolve
from agpo_trainer.callbacks import Callbacks, Chain, Recording
from agpo_trainer.checkpoint import (
    CheckpointMeta,
    latest_checkpoint,
    resume_training_state,
    save_training_state,
)
from agpo_trainer.data import PromptSampler, check_prompts_fit, load_examples
from agpo_trainer.distributed import broadcast_object
from agpo_trainer.evaluation import Evaluator, evaluation_sets
from agpo_trainer.experience import Batch, Experience
from agpo_trainer.metrics import StatusBoard, TrainerMetrics, serve
from agpo_trainer.overlap import RolloutPipeline, check_staleness, staleness_bound
from agpo_trainer.policy import Policy
from agpo_trainer.prompts import PromptEncoder
from agpo_trainer.rollout.backend import BackendFactory, RolloutBackend, WeightSyncFailed, connect
from agpo_trainer.runtime import Runtime
from agpo_trainer.stats import StepStats, algorithm_line
from agpo_trainer.tracking import RunTracking
from agpo_trainer.update import train_step
from agpo_trainer.warmup import format_warmup

log = logging.getLogger("agpo_trainer")

__all__ = ["Callbacks", "Recording", "train"]  # the hooks' classes, where callers take them


def train(
    job: AGPOJob,
    rt: Runtime,
    *,
    backend: BackendFactory = connect,
    callbacks: Callbacks | None = None,
) -> dict[str, Any] | None:
    """Run ``job`` on this rank until ``training.steps`` (or ``AGPO_MAX_STEPS``) are done;
    rank 0 returns its last ``/status`` object (the ``succeeded:`` termination line).

    ``backend`` builds rank 0's rollout backend once the policy is loaded (the vLLM servers
    by default); ``callbacks`` are called on rank 0."""
    spec = resolve(job.spec)  # every default applied once: the only spec the loop reads
    t = spec.training
    hooks = callbacks or Callbacks()
    total_steps = rt.total_steps(t.steps)
    metrics = TrainerMetrics()
    board = StatusBoard(TrainerProgress(phase="Initializing", step=0, total_steps=total_steps))
    if rt.is_main:  # the algorithm as validated (preset expanded) first
        log.info("%s", algorithm_line(job.spec.algorithm.to_dict()))

    # ----------------------------------------------------------------- setup, every rank
    if spec.trainer.threads_per_proc is not None:
        torch.set_num_threads(spec.trainer.threads_per_proc)
    check_reward_functions(spec)  # a broken reward function fails before any work
    random.seed(t.seed)
    torch.manual_seed(t.seed)
    # Every rank loads the data: a bad dataset must stop every rank with the same error.
    examples = load_examples(spec.dataset, rt.base_dir, dataset_path=rt.dataset_path)
    # Held-out rows (evaluation.source.fraction) leave the training data on every rank.
    examples, eval_examples = evaluation_sets(
        spec, examples, rt.base_dir, dataset_path=rt.dataset_path
    )
    sampler = PromptSampler(examples, t.seed)
    policy = Policy.load(spec, rt)
    # Before any server work: a dataset none of whose prompts fits would make the draw spin.
    check_prompts_fit(examples, PromptEncoder(policy.tokenizer, spec.dataset), t.max_prompt_tokens)
    resumed = resume_training_state(policy, sampler, rt.checkpoint_dir) if t.resume else None
    step, version = (resumed.step, resumed.policy_version) if resumed else (0, 0)
    if resumed is None and t.format_warmup_steps:
        format_warmup(policy, examples, spec, t.format_warmup_steps)
    if spec.algorithm.kl_coefficient > 0:  # a reference model only when the KL term is on
        policy.load_reference(rt.checkpoint_dir / "reference", resumed=resumed is not None)

    # ----------------------------------------------------------------- rank 0: the servers
    weights = policy.gather_weights()  # a collective under FSDP: every rank joins
    pipeline: RolloutPipeline[Batch, dict[str, Tensor] | None] | None = None
    evaluator: Evaluator | None = None
    servers: RolloutBackend | None = None
    every_sync = spec.rollout.weight_sync.every_steps
    bound = staleness_bound(t.max_staleness, every_sync)
    if rt.is_main:
        if rt.metrics_port:
            serve(metrics, board, rt.metrics_port)
        metrics.add("total_steps", total_steps)
        # the records file and spec.tracking's trackers first: their run header opens the run
        tracking = RunTracking(
            spec,
            job.metadata.name or "",
            rt.checkpoint_dir,
            on_drop=lambda tracker, n: metrics.add("tracker_dropped", n, label=tracker),
        )
        hooks = Chain([tracking, hooks])
        servers = backend(spec, rt, policy)
        experience = Experience(
            spec, tokenizer=policy.tokenizer, sampler=sampler, client=servers, metrics=metrics
        )
        if spec.evaluation is not None and eval_examples:
            evaluator = Evaluator(
                spec,
                spec.evaluation,
                tokenizer=policy.tokenizer,
                client=servers,
                examples=eval_examples,
            )
        board.update(TrainerProgress(phase="Running", policy_version=version))
        # The servers start from the trainer's weights (after a resume too).
        push_weights(servers, policy, weights, version, metrics)
        rank0 = servers

        def generate(i: int, served: int, w: dict[str, Tensor] | None, may_push: bool) -> Any:
            return rollout(experience, sampler, rank0, policy, w, served, i, may_push=may_push)

        def push(w: dict[str, Tensor] | None, v: int) -> float:
            return push_weights(rank0, policy, w, v, metrics)

        # maxStaleness 0: generate each step's batch at its start, push right after the
        # update (the sequential loop); 1: prefetch the next batch while training (overlap.py).
        pipeline = RolloutPipeline(
            depth=t.max_staleness,
            total_steps=total_steps,
            generate=generate,
            push=push,
            sampler_state=sampler.state_dict,
            served=version,
            weights=weights,
            refresh=lambda w, v: ensure_served(rank0, policy, w, v),
        )

    def evaluate() -> None:  # rank 0, between steps: no training request is in flight
        if evaluator is None or pipeline is None or servers is None:
            return
        if not evaluator.due(step, total_steps):
            return
        pipeline.drain()  # the in-flight batch done and the newest weights pushed
        ensure_served(servers, policy, pipeline.served_weights, pipeline.served)
        result = evaluator.run(step, pipeline.served)
        metrics.record_eval(result)
        board.update(result.progress())
        log.info("%s", result.log_line())
        hooks.on_eval(result)

    if step < total_steps:
        evaluate()  # the start (everySteps > 0), e.g. right after the format warm-up

    # ----------------------------------------------------------------- the loop
    every_checkpoint = t.checkpoint.every_steps
    while step < total_steps:
        t0 = time.perf_counter()
        # rollout (rank 0: generated now, or prefetched during the last update) -> every rank
        collected, generated, sync_s = None, version, 0.0
        if pipeline is not None:
            collected, generated, sync_s = pipeline.batch(step)
        batch: Batch = broadcast_object(collected, rt.rank)
        staleness = check_staleness(version, generated, bound)  # rank 0's figure; 0 elsewhere
        if rt.is_main:
            hooks.on_batch(step, batch)
        t1 = time.perf_counter()
        # train step (every rank, on its slice)
        update = train_step(
            policy,
            batch,
            spec,
            rank=rt.rank,
            world_size=rt.world_size,
            micro=rt.micro_batch_size,
        )
        train_s = time.perf_counter() - t1
        step += 1
        version += 1
        last = step == total_steps
        # weight push (rank 0, now or at the boundary; every rank gathers under FSDP)
        if step % every_sync == 0 or last:
            weights = policy.gather_weights()
            if pipeline is not None:
                sync_s += pipeline.weights_ready(weights, version)
        # checkpoint (every rank gathers, rank 0 writes; the cursor is before any batch
        # generated but not trained yet)
        if step % every_checkpoint == 0 or last:
            meta = CheckpointMeta(step, version, job.metadata.name or "")
            cursor = pipeline.cursor() if pipeline is not None else None
            save_training_state(
                policy, sampler, meta, rt.checkpoint_dir, t.checkpoint.keep, cursor=cursor
            )
        # report (rank 0)
        if rt.is_main:
            assert batch.stats is not None  # rank 0 built the batch
            pool = pool_figures(servers, metrics)
            stats = StepStats(
                step=step,
                total_steps=total_steps,
                policy_version=version,
                rollout=batch.stats,
                update=update,
                step_seconds=time.perf_counter() - t0,
                train_seconds=train_s,
                weight_sync_seconds=sync_s,
                prompts=batch.example_indices,
                rollout_policy_version=generated,
                batch_staleness=staleness,
                **pool,
            )
            metrics.record_step(stats)
            board.update(stats.progress())
            log.info("%s", stats.log_line())
            hooks.on_step(stats, batch)
            evaluate()
        if rt.is_main and step == rt.crash_after_step:
            log.warning("AGPO_CRASH_AFTER_STEP=%d: killing the trainer group", step)
            os.killpg(os.getpgid(0), signal.SIGKILL)
    if not rt.is_main:
        return None
    hooks.on_end(latest_checkpoint(rt.checkpoint_dir))
    board.update(TrainerProgress(phase="Succeeded"))
    return board.snapshot()


# --------------------------------------------------------------------------- rank 0's servers
def rollout(
    experience: Experience,
    sampler: PromptSampler,
    servers: RolloutBackend,
    policy: Policy,
    weights: dict[str, Tensor] | None,
    served: int,
    step: int,
    *,
    may_push: bool = True,
) -> Batch | None:
    """Rank 0: one step's batch, generated only by servers that serve version ``served``.

    Before generating, each server's ``/weight_info`` is read (one GET each); a replaced
    server (it serves its initial weights) gets the served weights again. If a server was
    replaced while generating, the same prompts are drawn and generated again, so the data
    order stays that of an uninterrupted run. Without ``may_push`` (a prefetch, while the
    module trains) a server that does not serve ``served`` is not pushed to: the sampler is
    put back and None returned, and the caller generates the batch again later.
    """
    while True:
        if may_push:
            ensure_served(servers, policy, weights, served)
        elif servers.lagging(served):
            return None
        cursor = sampler.state_dict()
        batch = experience.collect(step)
        if not servers.lagging(served):
            return batch
        log.warning("a rollout server was replaced during step %d's rollout: again", step + 1)
        sampler.load_state_dict(cursor)
        if not may_push:
            return None


def ensure_served(
    servers: RolloutBackend, policy: Policy, weights: dict[str, Tensor] | None, served: int
) -> float:
    """Rank 0, at a step boundary: every server that will generate serves version ``served``
    (new servers joined and pushed it, replaced or lagging ones pushed it again, gone ones
    dropped: :meth:`RolloutBackend.refresh`).

    Sharded (FSDP), ``weights`` is rank 0's gathered copy of exactly that version; otherwise
    the module is, since it changes only in the update after which it is pushed (or, with
    ``weightSync.everySteps > 1``, it is newer: then the servers get the newer weights,
    under the version they serve, until the next regular push)."""
    return servers.refresh(policy.module if weights is None else weights, served)


def pool_figures(servers: RolloutBackend | None, metrics: TrainerMetrics) -> dict[str, Any]:
    """Rank 0: the rollout pool's step figures (none for a backend that is not a pool); each
    server's pushes since the last step go to the per-server histogram."""
    health = servers.health() if servers is not None else None
    if health is None:
        return {}
    for url, seconds in health.push_seconds.items():
        for s in seconds:
            metrics.add("server_push_seconds", s, label=url)
    return {
        "rollout_servers": health.servers,
        "serving_servers": health.serving,
        "lagging_servers": health.lagging,
    }


def check_reward_functions(spec: ResolvedSpec) -> None:
    """Import every reward function now; a broken one raises before minutes of set-up."""
    from agpo_trainer.rewards.scoring import get_reward_function

    for reward in spec.algorithm.rewards:
        get_reward_function(reward.key)


def push_weights(
    servers: RolloutBackend,
    policy: Policy,
    weights: dict[str, Tensor] | None,
    version: int,
    metrics: TrainerMetrics,
) -> float:
    """Rank 0: send the policy (``weights`` when gathered from shards) to every server;
    the seconds it took.

    A push that fails (a server died mid-push, or was replaced since the last one) is tried
    once more after joining every server again, waiting up to the rollout timeout for a
    restarting one; a second failure ends the run (transient: a restart resumes it).
    """
    model = policy.module if weights is None else weights
    try:
        seconds = servers.push(model, version)
    except WeightSyncFailed as err:
        log.warning(
            "weight push of version %d failed (%s); joining the servers again", version, err
        )
        seconds = servers.resync(model, version)
    metrics.add("weight_sync_seconds", seconds)
    metrics.add("served_policy_version", version)
    return seconds
