"""The rollout pipeline (training.maxStaleness): what is generated with which weights, when
weights are pushed, which sampler cursor a checkpoint gets. The server work is done by
functions over a real PromptSampler and a served-version register; generation runs on the
pipeline's real thread and is held open with events, so overlap is observed, not assumed."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from agpo_trainer.data import Example, PromptSampler
from agpo_trainer.overlap import (
    RolloutPipeline,
    StalenessError,
    check_staleness,
    staleness_bound,
)

PER_STEP = 3


@dataclass
class Servers:
    """The served weights and a log of what happened, in order."""

    sampler: PromptSampler
    version: int = 0
    generating: int = 0
    events: list[tuple[Any, ...]] = field(default_factory=list)
    hold: dict[int, threading.Event] = field(default_factory=dict)  # step -> release
    started: dict[int, threading.Event] = field(default_factory=dict)
    replace_during: set[int] = field(default_factory=set)  # steps whose prefetch sees a new server
    lock: threading.Lock = field(default_factory=threading.Lock)

    def generate(self, step: int, served: int, weights: Any, may_push: bool) -> Any:
        assert self.version == served, "generated on servers that do not serve `served`"
        with self.lock:
            self.generating += 1
        self.started.setdefault(step, threading.Event()).set()
        try:
            cursor = self.sampler.state_dict()
            drawn = [e.index for e in self.sampler.take(PER_STEP)]
            if step in self.hold:
                assert self.hold[step].wait(10), "the test never released the generation"
            if not may_push and step in self.replace_during:
                self.replace_during.discard(step)
                self.sampler.load_state_dict(cursor)
                self.events.append(("replaced", step))
                return None
            self.events.append(("generated", step, served, tuple(drawn)))
            return {"step": step, "prompts": drawn}
        finally:
            with self.lock:
                self.generating -= 1

    def refresh(self, weights: Any, version: int) -> float:
        assert self.generating == 0, "the pool refreshed while a generation runs"
        assert self.version == version, "refreshed with another version than the served one"
        self.events.append(("refresh", version))
        return 0.25

    def push(self, weights: Any, version: int) -> float:
        assert self.generating == 0, "weights pushed while a generation runs"
        self.version = version
        self.events.append(("pushed", version))
        return 0.5


def examples(n: int = 50) -> list[Example]:
    return [Example(i, f"p{i}", "0") for i in range(n)]


def pipeline(depth: int, total: int, servers: Servers) -> RolloutPipeline[Any, Any]:
    return RolloutPipeline(
        depth=depth,
        total_steps=total,
        generate=servers.generate,
        push=servers.push,
        sampler_state=servers.sampler.state_dict,
        served=0,
        weights=None,
        refresh=servers.refresh,
    )


def run_loop(
    depth: int,
    total: int,
    *,
    sync_every: int = 1,
    eval_every: int = 0,
    servers: Servers | None = None,
    train: Any = None,
) -> tuple[Servers, list[dict[str, Any]]]:
    """The loop's calls in train.py's order; one record per step."""
    servers = servers or Servers(PromptSampler(examples(), seed=3))
    pipe = pipeline(depth, total, servers)
    bound = staleness_bound(depth, sync_every)
    records = []
    for step in range(total):
        version = step  # the policy version before this step's update
        batch, generated, sync_s = pipe.batch(step)
        staleness = check_staleness(version, generated, bound)
        servers.events.append(("train", step))
        if train is not None:
            train(step)
        version = step + 1
        if (step + 1) % sync_every == 0 or step + 1 == total:
            sync_s += pipe.weights_ready(None, version)
        records.append({"step": step + 1, "prompts": batch["prompts"], "generated": generated,
                        "staleness": staleness, "cursor": pipe.cursor(), "sync": sync_s})  # fmt: skip
        if eval_every and (step + 1) % eval_every == 0:
            pipe.drain()
            servers.events.append(("eval", pipe.served, servers.version))
    return servers, records


def sequential_events(total: int) -> list[tuple[Any, ...]]:
    """Today's loop: generate on the current weights, train, push; step after step."""
    sampler = PromptSampler(examples(), seed=3)
    out: list[tuple[Any, ...]] = []
    for step in range(total):
        out.append(("generated", step, step, tuple(e.index for e in sampler.take(PER_STEP))))
        out += [("train", step), ("pushed", step + 1)]
    return out


def test_max_staleness_0_is_the_sequential_loop_call_for_call() -> None:
    servers, records = run_loop(0, 5)
    assert servers.events == sequential_events(5)
    assert [r["staleness"] for r in records] == [0] * 5
    assert all(r["sync"] == 0.5 for r in records)  # each step's own push
    # the checkpoint cursor is the sampler's own: nothing is drawn ahead
    assert [r["cursor"]["position"] for r in records] == [3, 6, 9, 12, 15]


def test_max_staleness_1_generates_the_next_batch_while_training_and_pushes_after_it() -> None:
    servers = Servers(PromptSampler(examples(), seed=3))
    seen_running: list[int] = []

    def train(step: int) -> None:
        # The next batch's generation has started on the old weights before training ends.
        if step + 1 < 5:
            assert servers.started.setdefault(step + 1, threading.Event()).wait(10)
            seen_running.append(step + 1)

    servers, records = run_loop(1, 5, servers=servers, train=train)
    assert seen_running == [1, 2, 3, 4]
    # same prompts per step as the sequential loop, generated one version behind
    seq = [e for e in sequential_events(5) if e[0] == "generated"]
    gen = [e for e in servers.events if e[0] == "generated"]
    assert [e[3] for e in gen] == [e[3] for e in seq]
    assert [r["generated"] for r in records] == [0, 0, 1, 2, 3]
    assert [r["staleness"] for r in records] == [0, 1, 1, 1, 1]
    # every version is pushed exactly once, in order; the last one at once (nothing in flight)
    assert [e[1] for e in servers.events if e[0] == "pushed"] == [1, 2, 3, 4, 5]
    assert servers.version == 5
    # a push comes only after the generation that was running on the old weights
    # (and Servers.push asserts that no generation runs at that moment)
    where = {e[:2]: i for i, e in enumerate(servers.events)}
    for v in range(1, 5):
        assert where[("generated", v)] < where[("pushed", v)]
        assert servers.events[where[("generated", v)]][2] == v - 1


def test_checkpoint_cursor_is_before_the_untrained_prefetch_so_resume_regenerates_it() -> None:
    servers, records = run_loop(1, 4)
    by_step = {r["step"]: r for r in records}
    # After step 2 the prefetch of step 3 had drawn 3 more prompts; the cursor excludes them.
    assert by_step[2]["cursor"]["position"] == 6 and servers.sampler.position == 12
    # Resume from that cursor: the next draw is step 3's prompts, step 4's after it.
    resumed = PromptSampler(examples(), seed=3)
    resumed.load_state_dict(by_step[2]["cursor"])
    again = [[e.index for e in resumed.take(PER_STEP)] for _ in range(2)]
    assert again == [by_step[3]["prompts"], by_step[4]["prompts"]]
    # the last step's checkpoint: nothing drawn ahead
    assert by_step[4]["cursor"] == servers.sampler.state_dict()


@pytest.mark.parametrize("sync_every", [2, 3])
def test_staleness_never_exceeds_the_bound_with_spaced_weight_pushes(sync_every: int) -> None:
    _, records = run_loop(1, 9, sync_every=sync_every)
    bound = staleness_bound(1, sync_every)
    assert max(r["staleness"] for r in records) == bound  # reached, never passed
    _, seq = run_loop(0, 9, sync_every=sync_every)
    assert max(r["staleness"] for r in seq) == sync_every - 1  # today's spaced pushes


def test_evaluation_drains_the_prefetch_and_sees_the_newest_weights() -> None:
    servers, _ = run_loop(1, 6, eval_every=2)
    evals = [e for e in servers.events if e[0] == "eval"]
    assert evals == [("eval", 2, 2), ("eval", 4, 4), ("eval", 6, 6)]
    # the batch in flight at the evaluation finished before it, on the old weights
    where = {e[:2]: i for i, e in enumerate(servers.events)}
    assert where[("generated", 2)] < where[("pushed", 2)] < servers.events.index(evals[0])
    assert servers.events[where[("generated", 2)]][2] == 1


def test_a_server_replaced_during_a_prefetch_regenerates_the_batch_at_the_boundary() -> None:
    servers = Servers(PromptSampler(examples(), seed=3), replace_during={2})
    servers, records = run_loop(1, 4, servers=servers)
    assert ("replaced", 2) in servers.events
    # generated again on the newest weights (staleness 0), same prompts as sequentially
    assert [r["staleness"] for r in records] == [0, 1, 0, 1]
    seq = [e[3] for e in sequential_events(4) if e[0] == "generated"]
    assert [tuple(r["prompts"]) for r in records] == seq


def test_a_failed_prefetch_raises_in_the_trainer_thread() -> None:
    class Boom(RuntimeError):
        pass

    def generate(step: int, served: int, weights: Any, may_push: bool) -> Any:
        if step == 1:
            raise Boom("server gone")
        return {"step": step, "prompts": []}

    pipe: RolloutPipeline[Any, Any] = RolloutPipeline(
        depth=1, total_steps=3, generate=generate, push=lambda w, v: 0.0,
        sampler_state=dict, served=0, weights=None,
    )  # fmt: skip
    pipe.batch(0)
    with pytest.raises(Boom, match="server gone"):
        pipe.batch(1)


def test_check_staleness_refuses_too_old_or_newer_batches() -> None:
    assert check_staleness(5, 4, 1) == 1
    with pytest.raises(StalenessError, match=r"staleness 2, allowed 0\.\.1"):
        check_staleness(5, 3, 1)
    with pytest.raises(StalenessError, match="staleness -1"):
        check_staleness(3, 4, 1)
    with pytest.raises(ValueError, match="maxStaleness must be 0 or 1"):
        RolloutPipeline(depth=2, total_steps=1, generate=lambda *a: None, push=lambda w, v: 0.0,
                        sampler_state=dict, served=0, weights=None)  # fmt: skip


def test_the_pool_is_refreshed_at_every_boundary_before_a_prefetch_starts() -> None:
    """maxStaleness 1: the prefetch may not push, so new or lagging servers are joined at
    the boundary, after the deferred push and before the next generation starts (on the
    loop's thread, with the newest served version)."""
    servers, records = run_loop(1, 4)
    kinds = [e[0] for e in servers.events]
    assert kinds.count("refresh") == 3  # before the prefetch of steps 2, 3 and 4
    for i, event in enumerate(servers.events):
        if event[0] == "refresh":
            nxt = next(e for e in servers.events[i + 1 :] if e[0] in ("generated", "replaced"))
            assert nxt[0] == "generated" and nxt[2] == event[1]  # generated with that version
    # step 1: refresh; 2, 3: the deferred push + refresh; 4: deferred push + the last push
    assert [r["sync"] for r in records] == [0.25, 0.75, 0.75, 1.0]
