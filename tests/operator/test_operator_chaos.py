"""Chaos on the emulator: random pod failures and operator restarts at random moments.

The real kopf operator against the emulator; the test plays the StatefulSet and Job
controllers and the kubelet. Each round, drawn from a fixed seed: a trainer pod or a vLLM
server fails (a transient termination message), the progress moves on, and -- at random
moments, including right after a failure, before the operator has reacted -- the operator
is stopped and started again. Then the test waits (for conditions, never by sleeping) until
the job runs again. The end is a success or a permanent failure.

Asserted: no child is created twice (the emulator's request log: creates per name; one
trainer Job per attempt), the status is monotonic in every version the API server stored
(restarts and step never decrease), every trainer failure costs exactly one restart, every
vLLM failure exactly one pod deletion and no restart (the trainer Job stays the same: the
elastic pool), and the job ends Succeeded or Failed with a reason. Figures go to stdout
(``-s``) for docs/reliability.md.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest
from test_operator import CHILD_PLURALS, expected_children

from agpo_api.termination import FailureKind, format_success, format_termination

from operator_support import AGPOJOBS, NS, Operator, World, eventually, sample

ROUNDS = 20
REPLICAS = 2
TOTAL_STEPS = 30


def owned_pods(world: World, owner: dict[str, Any]) -> list[dict[str, Any]]:
    uid = owner["metadata"]["uid"]
    return [
        p for p in world.all("pods")
        if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])
    ]  # fmt: skip


async def converge(world: World, name: str) -> bool:
    """One step of the controllers and the kubelet; True once the job is Running."""
    sts = world.get("statefulsets", f"{name}-rollout")
    if sts is not None:
        for i in range(REPLICAS):
            pod = f"{name}-rollout-{i}"
            if world.get("pods", pod) is None:  # the StatefulSet controller replaces it
                await world._create_pod(sts, pod, {}, NS)
                await world.set_pod(pod, "Running", ready=True)
    tj = world.get("jobs", f"{name}-trainer")
    if tj is not None and not tj["metadata"].get("deletionTimestamp") and not owned_pods(world, tj):
        await world.start_trainer(name)
    return world.status(name).get("phase") == "Running"


def history(world: World, name: str) -> list[dict[str, Any]]:
    """Every stored version of the AGPOJob's status, oldest first."""
    obj = world.cluster.objects[(AGPOJOBS, NS, name)]
    return [dict(v.get("status") or {}) for v in obj.history]


@pytest.mark.parametrize(("seed", "ending"), [(7, "Succeeded"), (2026, "Failed")])
async def test_random_failures_and_operator_restarts(
    world: World, operator: Operator, seed: int, ending: str
) -> None:
    rng = random.Random(seed)
    name = f"chaos-{seed}"
    started = time.monotonic()
    await world.create_job(sample(name=name, runPolicy__backoffLimit=ROUNDS + 1,
                                  rollout__replicas=REPLICAS, training__steps=TOTAL_STEPS))  # fmt: skip
    await eventually(lambda: converge(world, name), what="Running")
    kills: Counter[str] = Counter()
    restarts_of_operator = step = 0
    for _ in range(ROUNDS):
        step = min(step + rng.randint(1, 3), TOTAL_STEPS - 1)
        world.set_progress(name, step=step, totalSteps=TOTAL_STEPS)
        await eventually(lambda s=step: world.status(name).get("step") == s, what=f"step {step}")
        before = world.status(name)["restarts"]
        if rng.random() < 0.3:  # the operator goes away while the job runs
            await operator.stop()
            await operator.start()
            restarts_of_operator += 1
        role = rng.choice(("trainer", "rollout"))
        pod = rng.choice(world.pods(name, role))
        uid = world.get("pods", pod)["metadata"]["uid"]
        job_uid = world.get("jobs", f"{name}-trainer")["metadata"]["uid"]
        message = format_termination(FailureKind.TRANSIENT, f"chaos: {role} pod killed")
        await world.set_pod(pod, "Failed", exit_code=137, message=message)
        kills[role] += 1
        if rng.random() < 0.4:  # ... or right after a failure, before it has reacted
            await operator.stop()
            await operator.start()
            restarts_of_operator += 1
        if role == "trainer":
            await eventually(lambda n=before + 1: world.status(name).get("restarts") == n,
                             what="the restart counted once")  # fmt: skip
        else:  # the server is replaced alone: the trainer goes on with the other one
            await eventually(lambda p=pod, u=uid: world.replaced(p, u), what=f"{pod} replaced")
            assert world.get("jobs", f"{name}-trainer")["metadata"]["uid"] == job_uid
            assert world.status(name)["restarts"] == before
        await eventually(lambda: converge(world, name), what="Running again")

    rank0 = next(p for p in world.pods(name, "trainer") if "-trainer-0-" in p)
    if ending == "Succeeded":
        final = format_success({"step": TOTAL_STEPS, "totalSteps": TOTAL_STEPS, "rewardMean": 1.0})
        await world.set_pod(rank0, "Succeeded", exit_code=0, message=final)
    else:
        final = format_termination(FailureKind.PERMANENT, "chaos: reward module does not import")
        await world.set_pod(rank0, "Failed", exit_code=1, message=final)
    await eventually(lambda: world.status(name).get("phase") == ending, what=ending)
    elapsed = time.monotonic() - started

    status = world.status(name)
    reason = world.condition(name, ending)["reason"]
    assert reason == ("TrainingSucceeded" if ending == "Succeeded" else "PermanentFailure")
    assert sum(kills.values()) == ROUNDS
    assert status["restarts"] == kills["trainer"]
    assert len(world.deletes("pods")) == kills["rollout"]  # one replacement per server failure
    if ending == "Succeeded":
        assert status["step"] == TOTAL_STEPS

    # No duplicates: every static child and the StatefulSet created once, one Job per attempt.
    duplicates = 0
    for plural, child in expected_children(name, rollout__replicas=REPLICAS):
        creates = len(world.creates(plural, child))
        expected = kills["trainer"] + 1 if plural == CHILD_PLURALS["Job"] else 1
        duplicates += creates - expected
        assert creates == expected, f"{plural}/{child}: {creates} creates, expected {expected}"
    attempts = [s.request.data["metadata"]["labels"]["agpo.dev/attempt"]
                for s in world.creates("jobs", f"{name}-trainer")]  # fmt: skip
    assert attempts == [str(i) for i in range(kills["trainer"] + 1)]

    # Monotonic in every stored version of the status.
    versions = history(world, name)
    for field in ("restarts", "step"):
        values = [v[field] for v in versions if field in v]
        assert values == sorted(values), f"{field} decreased: {values}"
    assert world.errors() == [] and world.forbidden() == []
    print(
        f"\nchaos seed={seed} ending={ending}: {kills['trainer']} trainer and "
        f"{kills['rollout']} rollout pod kills, {restarts_of_operator} operator restarts "
        f"survived; restarts={status['restarts']}; vLLM pods replaced without a restart="
        f"{len(world.deletes('pods'))}; duplicates={duplicates}; "
        f"{len(versions)} status versions checked; {elapsed:.1f}s"
    )
