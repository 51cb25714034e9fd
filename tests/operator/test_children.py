"""The child registry is the one table: the objects the actions create and delete, the REST
paths, what `agpo render` prints and the RBAC rules all follow from the `Child` descriptors.

The last tests add a child object the way docs/architecture.md says (a builder, its `Child`,
one registration) in a registry of their own, and see it created in its order, deleted with
its lifetime, rendered and granted -- without touching any other file, and without changing
the operator's registry.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import yaml

from agpo_api import AGPOJob, parse_job
from agpo_operator import kube, rbac
from agpo_operator.act import expected_static, perform
from agpo_operator.actions import CreateRollout, CreateStatic, CreateTrainer, DeleteTrainer
from agpo_operator.builders import CHILDREN, build_children
from agpo_operator.builders.child import (
    FIRST,
    NEXT,
    READ_BACK,
    Child,
    Creation,
    Grant,
    Kind,
    Lifetime,
    Registry,
    plain,
)
from agpo_operator.builders.common import BuildOptions, Names, Obj, metadata
from agpo_operator.generate import ROOT
from agpo_operator.rbac import allows, rbac_rules

from operator_support import FakeKube, act_context, sample


def job(**changes: Any) -> AGPOJob:
    return parse_job({**sample(**changes), "metadata": {"name": "j"}})


def every_object(registry: Registry = CHILDREN) -> list[tuple[Child, Obj]]:
    """Each child with what it builds for a job that has every optional child: a gang job
    scaled from the 2 servers of its gang to 3 (the third in the extra StatefulSet)."""
    j = job(metrics={"podMonitor": True}, runPolicy__gang={"mode": "coscheduling"},
            rollout__replicas=3)  # fmt: skip
    creation = Creation("t", 1, gang_replicas=2)
    return [
        built
        for lifetime in Lifetime
        for built in registry.build(lifetime, j, "ns", BuildOptions(), creation)
    ]


# --------------------------------------------------------------------- the operator's registry
def test_every_child_builds_the_object_its_descriptor_names() -> None:
    built = every_object()
    assert [c for c, _ in built] == [c for lt in Lifetime for c in CHILDREN.of(lt)]
    assert len(built) == len(CHILDREN.children)
    n = Names(job="j", namespace="ns")
    for child, obj in built:
        assert (obj["apiVersion"], obj["kind"]) == (child.kind.api_version, child.kind.kind)
        assert obj["metadata"]["name"] == child.name(n)
        # the path the operator uses for it is the plural of its descriptor
        path = kube.path(child.kind, "ns", child.name(n))
        assert path.endswith(f"/namespaces/ns/{child.kind.plural}/{child.name(n)}")


def test_every_childs_grants_are_in_the_generated_roles() -> None:
    role = next(d for d in yaml.safe_load_all((ROOT / "manifests/rbac/role.yaml").read_text())
                if d and d["kind"] == "ClusterRole")  # fmt: skip
    chart = yaml.safe_load((ROOT / "charts/agpo-operator/files/rbac-rules.yaml").read_text())
    for child in CHILDREN.children:
        for grant in child.grants:
            resource = "/".join(filter(None, (child.kind.plural, grant.subresource)))
            for verb in grant.verbs:
                for rules in (rbac_rules(), role["rules"], chart["rules"]):
                    assert allows(rules, child.kind.group, resource, verb), (child, verb)


def test_rules_are_one_per_resource_with_the_union_of_verbs_and_every_reason() -> None:
    services = [r for r in rbac.RULES if r.resources == ("services",)]
    assert len(services) == 1 and services[0].verbs == ("get", "create")
    assert "vLLM" in services[0].why and "metrics" in services[0].why
    resources = [(r.api_group, r.resources) for r in rbac.RULES]
    assert len(resources) == len(set(resources))


def config_map(
    verbs: tuple[str, ...], lifetime: Lifetime = Lifetime.STATIC, plural: str = "configmaps"
) -> Child:
    """A ConfigMap child granted ``verbs`` only."""
    return Child(
        kind=Kind("v1", "ConfigMap", plural), build=plain(lambda *_: None),
        name=lambda n: n.job, grants=(Grant(verbs, "a test's grants"),), lifetime=lifetime,
    )  # fmt: skip


@pytest.mark.parametrize(
    "child, error",
    [
        (config_map(("create",)), r"ConfigMap \(static\) needs \['get'\]"),
        (config_map(("get", "create"), Lifetime.ATTEMPT), r"needs \['delete'\]"),
        (config_map(("get", "create"), plural="cms"), "two plurals"),
    ],
)
def test_a_child_without_the_verbs_the_operator_uses_is_refused(child: Child, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        CHILDREN.with_child(child)


# --------------------------------------------------------------------- adding a child object
LIMIT_RANGE = Kind("v1", "LimitRange", "limitranges")


def build_limit_range(job: AGPOJob, n: Names, options: BuildOptions) -> Obj:
    return {"apiVersion": "v1", "kind": "LimitRange", "metadata": metadata(n, f"{n.job}-limits", "limits"),
            "spec": {"limits": [{"type": "Container", "max": {"memory": "64Gi"}}]}}  # fmt: skip


def limits(order: int) -> Child:
    return Child(
        kind=LIMIT_RANGE,
        build=plain(build_limit_range),
        name=lambda n: f"{n.job}-limits",
        grants=(Grant(("create",), "a per-job LimitRange"), READ_BACK),
        order=order,
    )


@pytest.mark.parametrize("order", [FIRST, NEXT, NEXT + 1])
def test_a_new_static_child_is_created_in_its_order_rendered_and_granted(order: int) -> None:
    registry = CHILDREN.with_child(limits(order))
    calls, _ = run_static(registry)
    created = [kind for verb, kind, _ in calls if verb == "create"]
    at = created.index("LimitRange")
    first = {"ServiceAccount", "NetworkPolicy"}
    if order == FIRST:
        assert set(created[: at + 1]) <= first | {"LimitRange"}
    else:
        assert first <= set(created[:at])
    if order > NEXT:
        assert at == len(created) - 1
    assert "LimitRange" in [o["kind"] for o in build_children(job(), "ns", registry=registry)]
    assert allows(rbac_rules(children=registry), "", "limitranges", "get")
    assert allows(rbac_rules(children=registry), "", "limitranges", "create")
    assert kube.path(LIMIT_RANGE, "ns", "j-limits") == "/api/v1/namespaces/ns/limitranges/j-limits"
    # the periodic check for deleted children looks for it
    ctx = act_context(FakeKube(), [], children=registry)
    keys = [f"{c.kind.kind}/{o['metadata']['name']}" for c, o in asyncio.run(expected_static(ctx))]
    assert "LimitRange/j-limits" in keys
    # the operator's own registry and rules are as they were
    assert LIMIT_RANGE not in CHILDREN.kinds()
    assert not allows(rbac_rules(), "", "limitranges", "create")


def run_static(registry: Registry) -> tuple[list[tuple[str, str, str]], list[Any]]:
    kube_, events = FakeKube(), []
    asyncio.run(perform(act_context(kube_, events, children=registry), CreateStatic()))
    return kube_.calls, events


def test_a_new_per_attempt_child_comes_and_goes_with_the_trainer_job() -> None:
    def build_attempt_config(job: AGPOJob, n: Names, options: BuildOptions, c: Creation) -> Obj:
        meta = metadata(n, f"{n.job}-attempt", "trainer")
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                "data": {"attempt": str(c.attempt)}}  # fmt: skip

    attempt_config = Child(
        kind=Kind("v1", "ConfigMap", "configmaps"),
        build=build_attempt_config,
        name=lambda n: f"{n.job}-attempt",
        grants=(Grant(("create", "delete"), "what one trainer attempt reads"),),
        lifetime=Lifetime.ATTEMPT,
    )
    registry = CHILDREN.with_child(attempt_config)
    for action, expected in [
        (CreateTrainer(3), [("create", "Job", "j-trainer"), ("create", "ConfigMap", "j-attempt")]),
        (DeleteTrainer(), [("delete", "Job", "j-trainer"), ("delete", "ConfigMap", "j-attempt")]),
        (CreateRollout(), [("create", "StatefulSet", "j-rollout")]),
    ]:
        kube_ = FakeKube()
        asyncio.run(perform(act_context(kube_, [], children=registry), action))
        assert kube_.calls == expected, action
    built = registry.build(Lifetime.ATTEMPT, job(), "ns", BuildOptions(), Creation(attempt=3))
    assert built[-1][1]["data"] == {"attempt": "3"}
    assert allows(rbac_rules(children=registry), "", "configmaps", "delete")
    assert not allows(rbac_rules(), "", "configmaps", "delete")
