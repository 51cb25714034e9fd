"""Spec changes on a live job (agpo_operator.spec_change): what may change, what is refused."""

from __future__ import annotations

from typing import Any

from agpo_api import AGPOJobSpec, parse_job
from agpo_operator.spec_change import effective_spec, immutable_changes

from operator_support import sample


def spec(**changes: Any) -> AGPOJobSpec:
    manifest = sample(**changes)
    manifest["metadata"] = {"name": "j"}
    return parse_job(manifest).spec


def test_immutable_changes_and_the_effective_spec() -> None:
    applied = spec()
    wanted = spec(trainer={"nodes": 2, "procsPerNode": 1, "gpusPerNode": 0},
                  runPolicy={"backoffLimit": 7, "suspend": True})  # fmt: skip
    changes = immutable_changes(applied, wanted)
    assert any(c.startswith("spec.trainer.nodes") for c in changes)
    assert not any("runPolicy" in c for c in changes)
    eff = effective_spec(applied, wanted)
    assert eff.trainer.nodes == applied.trainer.nodes
    assert eff.run_policy.backoff_limit == 7 and eff.run_policy.suspend is True
    assert immutable_changes(applied, spec(runPolicy__activeDeadlineSeconds=5)) == []
