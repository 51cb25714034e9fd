"""Typed actions (agpo_operator.actions) and their actuation (agpo_operator.act.perform)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from agpo_api import parse_job
from agpo_operator.act import ActContext, perform
from agpo_operator.actions import (
    Action,
    CreateRollout,
    CreateStatic,
    CreateTrainer,
    DeleteJob,
    DeletePods,
    DeleteRollout,
    DeleteTrainer,
    Event,
    SuspendTrainer,
    is_create,
)
from agpo_operator.builders import BuildOptions
from agpo_operator.builders.common import Names

from operator_support import sample


class FakeKube:
    """Records every call as (verb, kind, name)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", obj["kind"], obj["metadata"]["name"]))
        return obj

    async def delete(self, api_version: str, kind: str, ns: str, name: str, **_: Any) -> bool:
        self.calls.append(("delete", kind, name))
        return True

    async def patch(self, api_version: str, kind: str, ns: str, name: str, patch: Any,
                    **_: Any) -> dict[str, Any]:  # fmt: skip
        self.calls.append(("patch", kind, name))
        return {}


def run(action: Action, **spec_changes: Any) -> tuple[list[tuple[str, str, str]], list[Event]]:
    kube, events = FakeKube(), []
    manifest = sample(**spec_changes)
    manifest["metadata"] = {"name": "j"}

    async def no_api_group(group: str) -> bool:
        return False

    ctx = ActContext(
        kube=kube,  # type: ignore[arg-type]
        options=BuildOptions(),
        names=Names(job="j", namespace="ns"),
        uid="uid-1",
        spec=parse_job(manifest).spec,
        has_api_group=no_api_group,
        post_event=events.append,
    )
    asyncio.run(perform(ctx, action))
    return kube.calls, events


def test_actions_are_frozen_values() -> None:
    assert CreateTrainer(1) == CreateTrainer(1) != CreateTrainer(2)
    assert DeletePods(("a",)) == DeletePods(("a",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        CreateTrainer(1).attempt = 2  # type: ignore[misc]
    assert [is_create(a) for a in (CreateStatic(), CreateRollout(), CreateTrainer(0))] == [True] * 3
    assert not any(is_create(a) for a in (DeleteRollout(), DeleteTrainer(), SuspendTrainer(),
                                           DeletePods(()), DeleteJob()))  # fmt: skip


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


def test_static_children_skip_the_pod_monitor_without_its_api() -> None:
    calls, events = run(CreateStatic(), metrics={"podMonitor": True})
    kinds = [kind for _, kind, _ in calls]
    assert "PodMonitor" not in kinds and {"ConfigMap", "Secret", "NetworkPolicy"} <= set(kinds)
    assert kinds.index("NetworkPolicy") < kinds.index("ConfigMap")
    assert [e.reason for e in events] == ["PodMonitorUnavailable"]
