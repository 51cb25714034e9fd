"""The AGPOJob models: defaults, round trips and every cross-field rule."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml

from agpo_api import AGPOJob, InvalidJobError, parse_job
from agpo_api.base import ApiModel
from agpo_api.models import AGPOJobSpec

from agpo_testlib import SAMPLES
from cases import BAD_CASES, CPU, BadCase, apply


def test_minimal_spec_gets_sensible_defaults(minimal_job: dict[str, Any]) -> None:
    spec = parse_job(minimal_job).spec
    algo = spec.algorithm
    assert (algo.preset, algo.advantage, algo.zero_variance) == ("agpo", "grpo", "agpo")
    assert (algo.policy_loss, algo.group_size) == ("clipped", 8)
    assert (algo.length_reward.type, algo.length_reward.coefficient) == ("agpo", 0.1)
    assert (algo.clip.low, algo.clip.high) == (0.2, 0.28)
    assert algo.kl_coefficient == 0.0 and algo.loss_aggregation == "token-mean"
    assert [(r.name, r.weight) for r in algo.rewards] == [("accuracy", 1.0)]
    assert spec.trainer.strategy == "ddp" and spec.rollout.replicas == 1
    assert spec.run_policy.backoff_limit == 3 and spec.run_policy.suspend is False
    assert spec.training.resume is True and spec.metrics.port == 9400


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_round_trips_yaml_model_yaml(path: Any) -> None:
    doc = yaml.safe_load(path.read_text())
    job = parse_job(doc)
    dumped = job.to_dict()
    # model -> YAML -> model is the identity, and the YAML keeps every field the user wrote
    again = parse_job(yaml.safe_load(yaml.safe_dump(dumped)))
    assert again == job
    assert again.to_dict() == dumped
    _assert_contains(dumped, doc)


def _assert_contains(full: Any, written: Any, where: str = "") -> None:
    if isinstance(written, dict):
        for key, value in written.items():
            assert key in full, f"{where}.{key} lost in the round trip"
            _assert_contains(full[key], value, f"{where}.{key}")
    elif isinstance(written, list):
        assert len(full) == len(written)
        for i, (a, b) in enumerate(zip(full, written, strict=True)):
            _assert_contains(a, b, f"{where}[{i}]")
    else:
        assert full == written, where


def test_python_names_and_yaml_names_both_work() -> None:
    spec = AGPOJobSpec.model_validate(
        {
            "model": {"name": "m"},
            "dataset": {"source": {"builtin": {}}},
            "algorithm": {"groupSize": 4},
        }
    )
    assert spec.algorithm.group_size == 4
    assert spec.to_dict()["algorithm"]["groupSize"] == 4


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_bad_spec_is_rejected_naming_the_field(case: BadCase) -> None:
    with pytest.raises(InvalidJobError) as info:
        parse_job(apply(case.patch), "job.yaml")
    paths = [p.path for p in info.value.problems]
    assert case.path in paths, f"expected a problem at {case.path}, got {info.value}"
    assert "Traceback" not in str(info.value)


def test_every_rule_is_covered_by_a_bad_case() -> None:
    """Each cross-field rule must have a case that breaks it (so no rule goes untested)."""
    reported = set()
    for case in BAD_CASES:
        try:
            parse_job(apply(case.patch))
        except InvalidJobError as err:
            reported.update(p.path for p in err.problems)
    rules = [(cls.__name__, rule.field) for cls in _all_models() for rule in cls.rules]
    for cls_name, field in rules:
        leaf = field.split(".")[-1] if field else ""
        assert any(p.endswith(leaf) for p in reported), (
            f"no bad case breaks the rule on {cls_name}.{field or '<object>'}"
        )


def _all_models() -> list[type[ApiModel]]:
    out: list[type[ApiModel]] = []
    stack = list(ApiModel.__subclasses__())
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack.extend(cls.__subclasses__())
    return out


def test_valid_cpu_variant_of_nccl_case(minimal_job: dict[str, Any]) -> None:
    doc = apply({**CPU, "spec.rollout.weightSync": {"backend": "gloo"}}, minimal_job)
    assert parse_job(doc).spec.rollout.weight_sync.backend == "gloo"


def test_wrong_api_version_and_kind(minimal_job: dict[str, Any]) -> None:
    minimal_job["apiVersion"] = "agpo.dev/v1"
    minimal_job["kind"] = "Job"
    with pytest.raises(InvalidJobError) as info:
        parse_job(minimal_job)
    assert {p.path for p in info.value.problems} == {"apiVersion", "kind"}


def test_api_imports_neither_torch_nor_kopf() -> None:
    code = (
        "import sys, agpo_api, agpo_api.crd, agpo_cli.main; "
        "print(sorted(m for m in ('torch', 'kopf', 'kubernetes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_job_model_is_the_whole_resource() -> None:
    assert set(AGPOJob.model_fields) == {"api_version", "kind", "metadata", "spec", "status"}
