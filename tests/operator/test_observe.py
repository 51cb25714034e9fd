"""Observations (agpo_operator.observe): pods and children read from API objects."""

from __future__ import annotations

from agpo_operator.builders.common import Names
from agpo_operator.observe import PodView, children_of


def test_pod_view_reads_phase_readiness_index_and_exit() -> None:
    raw = {
        "metadata": {"name": "p", "annotations": {"batch.kubernetes.io/job-completion-index": "3"}},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "vllm", "restartCount": 2,
                                   "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                                   "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}}],
        },
    }  # fmt: skip
    v = PodView.of(raw)
    assert (v.name, v.phase, v.ready, v.index, v.restarts) == ("p", "Running", True, 3, 2)
    assert v.problem == "container vllm exited with code 137 (OOMKilled)"
    assert v.waiting == "CrashLoopBackOff: back-off"


def test_children_are_the_named_workloads_and_the_pods_they_control() -> None:
    def obj(name: str, uid: str, owner: str | None = None) -> dict[str, object]:
        refs = [{"uid": owner, "controller": True}] if owner else []
        return {"metadata": {"name": name, "uid": uid, "ownerReferences": refs}}

    n = Names(job="j", namespace="ns")
    stss = [obj("other-rollout", "x"), obj("j-rollout", "s")]
    pods = [obj("j-rollout-0", "p0", "s"), obj("j-trainer-0", "p1", "t"), obj("stray", "p2", "x")]
    c = children_of(n, stss, [obj("j-trainer", "t")], pods)  # type: ignore[arg-type]
    assert c.statefulset is stss[1] and c.trainer_job is not None
    assert [p.name for p in c.rollout_pods] == ["j-rollout-0"]
    assert [p.name for p in c.trainer_pods] == ["j-trainer-0"]
    assert children_of(n, [], [], pods).rollout_pods == ()  # type: ignore[arg-type]
