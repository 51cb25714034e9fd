"""Actuation (agpo_operator.act.perform and the loop's apply): which API calls each action
makes, in which order, and what a 409 means for each child."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from agpo_operator import metrics
from agpo_operator.act import ChildConflictError, perform
from agpo_operator.actions import (
    Action,
    CreateRollout,
    CreateStatic,
    CreateTrainer,
    Decision,
    DeleteJob,
    DeletePods,
    DeleteRollout,
    DeleteTrainer,
    Event,
    SuspendTrainer,
)
from agpo_operator.builders import BuildOptions
from agpo_operator.config import Config
from agpo_operator.loop import JobLoop
from agpo_operator.observe import Observation

from operator_support import Call, FakeKube, act_context


def run(action: Action, kube: FakeKube | None = None, **kw: Any) -> tuple[list[Call], list[Event]]:
    kube, events = kube or FakeKube(), []
    asyncio.run(perform(act_context(kube, events, **kw), action))
    return kube.calls, events


@pytest.mark.parametrize(
    ("action", "calls"),
    [
        (DeleteRollout(), [("delete", "StatefulSet", "j-rollout")]),
        (DeleteTrainer(), [("delete", "Job", "j-trainer")]),
        (SuspendTrainer(), [("patch", "Job", "j-trainer")]),
        (DeletePods(("p0", "p1")), [("delete", "Pod", "p0"), ("delete", "Pod", "p1")]),
        (DeleteJob(), [("delete", "AGPOJob", "j")]),
        (CreateRollout(), [("create", "StatefulSet", "j-rollout")]),
        (CreateTrainer(2), [("create", "Job", "j-trainer")]),
    ],
)
def test_each_action_is_one_api_operation(action: Action, calls: list[Any]) -> None:
    assert run(action)[0] == calls


def test_isolation_and_identity_come_before_the_other_static_children() -> None:
    calls, events = run(CreateStatic())
    kinds = [kind for _, kind, _ in calls]
    assert set(kinds[:3]) == {"ServiceAccount", "NetworkPolicy"}
    assert {"Secret", "ConfigMap", "Service"} <= set(kinds[3:])
    assert events == []


def test_static_children_skip_the_pod_monitor_without_its_api() -> None:
    calls, events = run(CreateStatic(), metrics={"podMonitor": True})
    kinds = [kind for _, kind, _ in calls]
    assert "PodMonitor" not in kinds and {"ConfigMap", "Secret", "NetworkPolicy"} <= set(kinds)
    assert [e.reason for e in events] == ["PodMonitorUnavailable"]
    assert "(Service j-trainer-metrics)" in events[0].message
    calls, events = run(
        CreateStatic(),
        metrics={"podMonitor": True},
        api_groups=frozenset({"monitoring.coreos.com"}),
    )
    assert ("create", "PodMonitor", "j-trainer-metrics") in calls and events == []


def test_recreating_deleted_children_creates_only_those_and_warns_nothing() -> None:
    calls, events = run(
        CreateStatic(("Secret/j-rollout-token", "PodMonitor/j-trainer-metrics")),
        metrics={"podMonitor": True},
    )
    assert calls == [("create", "Secret", "j-rollout-token")] and events == []


def test_an_existing_child_is_read_back_unless_it_cannot_be_read() -> None:
    ours = {"metadata": {"ownerReferences": [{"uid": "uid-1", "controller": True}]}}
    kube = FakeKube({("ConfigMap", "j-spec"): ours, ("Secret", "j-rollout-token"): {}})
    calls, _ = run(CreateStatic(("ConfigMap/j-spec", "Secret/j-rollout-token")), kube)
    assert ("get", "ConfigMap", "j-spec") in calls
    assert ("get", "Secret", "j-rollout-token") not in calls  # no read rights, by design

    foreign = FakeKube({("ConfigMap", "j-spec"): {"metadata": {"name": "j-spec"}}})
    with pytest.raises(ChildConflictError, match="ConfigMap j-spec exists and is not owned"):
        run(CreateStatic(("ConfigMap/j-spec",)), foreign)


class Services:
    """What a JobLoop uses of the process, with a recording API client."""

    def __init__(self, kube: FakeKube) -> None:
        self.config = Config()
        self.options = BuildOptions()
        self.phases = metrics.PhaseTracker()
        self.kube = kube
        self.events: list[Event] = []

    def http(self) -> Any:
        raise AssertionError("no /status poll in these tests")

    async def has_api_group(self, group: str) -> bool:
        return False

    def post_event(self, body: Any, event: Event) -> None:
        self.events.append(event)


def test_the_loop_creates_before_the_status_write_and_deletes_after() -> None:
    kube = FakeKube()
    loop = JobLoop(Services(kube), "ns", "j")  # type: ignore[arg-type]
    spec = act_context(kube, []).spec
    now = dt.datetime.now(dt.UTC)
    obs = Observation(name="j", namespace="ns", generation=1, now=now, status={}, spec=spec)
    decision = Decision(
        status={"phase": "Restarting"},
        actions=[DeleteTrainer(), CreateRollout(), DeletePods(("p",))],
    )
    body = {"metadata": {"name": "j", "namespace": "ns", "uid": "uid-1"}}
    asyncio.run(loop.apply(body, obs, decision))
    assert kube.calls == [
        ("create", "StatefulSet", "j-rollout"),
        ("patch", "AGPOJob", "j"),  # the status
        ("delete", "Job", "j-trainer"),
        ("delete", "Pod", "p"),
    ]
