"""Presets: each expands to the documented fields, explicit fields win, nothing silently means
another, the resolved job is what render/the ConfigMap carry, and old specs get told what to do."""

from __future__ import annotations

import re
from typing import Any

import pytest

from agpo_api import InvalidJobError, parse_job
from agpo_api.models import PRESETS, AlgorithmSpec

from agpo_testlib import MINIMAL, ROOT
from cases import apply

FIELDS = ("advantage", "zeroVariance", "policyLoss", "lossAggregation", "klCoefficient")


def algorithm(patch: dict[str, Any]) -> dict[str, Any]:
    job = parse_job(apply({f"spec.algorithm.{k}": v for k, v in patch.items()}))
    return job.spec.algorithm.to_dict()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_resolves_to_its_fields(preset: str) -> None:
    resolved = algorithm({"preset": preset})
    table = PRESETS[preset]
    assert resolved["preset"] == preset
    for field in FIELDS:
        assert resolved[field] == table[field], field
    assert resolved["clip"] == table["clip"]
    # the preset sets type and coefficient; scope and target keep their defaults
    assert resolved["lengthReward"] == {
        **table["lengthReward"],
        "scope": "mixed",
        "target": "completion",
    }


def test_the_docs_table_is_the_presets_table() -> None:
    text = (ROOT / "docs" / "algorithm.md").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| `(\w+)`( \(default\))? \| (.*)\|$", line)
        cells = [c.strip() for c in m.group(3).split("|")] if m else []
        if m and m.group(1) in PRESETS and len(cells) >= 8:  # the presets table's rows
            rows[m.group(1)] = cells
    assert set(rows) == set(PRESETS)
    for name, cells in rows.items():
        t = PRESETS[name]
        advantage, zero_variance, loss, aggregation, clip, length, kl = cells[:7]
        assert (advantage, zero_variance, loss, aggregation) == tuple(
            f"`{t[k]}`" for k in ("advantage", "zeroVariance", "policyLoss", "lossAggregation")
        ), name
        if t["policyLoss"] != "gvpo":
            assert clip == f"{t['clip']['low']} / {t['clip']['high']}", name
        kind = t["lengthReward"]["type"]
        assert length.startswith(f"`{kind}`"), name
        if kind != "none":
            assert length == f"`{kind}`, {t['lengthReward']['coefficient']}", name
        assert float(kl) == t["klCoefficient"], name


def test_default_is_agpo_exactly_as_before() -> None:
    resolved = algorithm({})
    assert resolved["preset"] == "agpo"
    assert (resolved["advantage"], resolved["zeroVariance"]) == ("grpo", "agpo")
    assert resolved["clip"] == {"low": 0.2, "high": 0.28}
    assert resolved["lengthReward"] == {
        "type": "agpo",
        "coefficient": 0.1,
        "scope": "mixed",
        "target": "completion",
    }
    assert resolved["lossAggregation"] == "token-mean" and resolved["klCoefficient"] == 0.0


def test_advantage_grpo_alone_is_plain_grpo() -> None:
    """The bug: advantage grpo with the default zeroVariance still got AGPO's +-1."""
    resolved = algorithm({"advantage": "grpo"})
    assert resolved["preset"] == "grpo"
    assert resolved["zeroVariance"] == "keep"
    assert resolved["lengthReward"]["type"] == "none"
    # ... unless the preset says otherwise
    assert algorithm({"preset": "agpo", "advantage": "grpo"})["zeroVariance"] == "agpo"
    # and asking for the AGPO signal is explicit
    assert algorithm({"zeroVariance": "agpo"})["zeroVariance"] == "agpo"


def test_explicit_fields_override_the_preset() -> None:
    resolved = algorithm(
        {"preset": "dapo", "advantage": "dr_grpo", "clip": {"high": 0.3}, "klCoefficient": 0.01}
    )
    assert resolved["advantage"] == "dr_grpo" and resolved["zeroVariance"] == "resample"
    assert resolved["clip"] == {"low": 0.2, "high": 0.3}
    assert resolved["klCoefficient"] == 0.01
    # a length reward of another type takes none of the preset's values
    assert algorithm({"preset": "agpo", "lengthReward": {"type": "kimi"}})["lengthReward"] == {
        "type": "kimi",
        "coefficient": 1.0,
        "scope": "mixed",
        "target": "completion",
    }


def test_resolved_spec_round_trips() -> None:
    for preset in PRESETS:
        clip = {"low": 0.1, "high": 0.3}
        spec = AlgorithmSpec.model_validate({"preset": preset, "clip": clip})
        assert AlgorithmSpec.model_validate(spec.to_dict()) == spec


def test_configmap_and_render_hold_the_resolved_algorithm() -> None:
    from agpo_operator.builders.config import expanded_job

    job = parse_job(apply({"spec.algorithm.preset": "dr_grpo"}))
    names = type("N", (), {"job": "minimal", "namespace": "default"})()
    spec = expanded_job(job, names)["spec"]  # type: ignore[arg-type]
    assert spec["algorithm"]["advantage"] == "dr_grpo"
    assert spec["algorithm"]["lossAggregation"] == "seq-mean-token-sum-norm"
    assert spec["algorithm"]["zeroVariance"] == "keep"
    # what the pods parse again is the same job
    assert parse_job({**MINIMAL, "spec": spec}).spec == job.spec


def test_old_advantage_agpo_is_told_what_to_write() -> None:
    with pytest.raises(InvalidJobError) as info:
        parse_job(apply({"spec.algorithm.advantage": "agpo"}))
    [problem] = info.value.problems
    assert problem.path == "spec.algorithm.advantage"
    assert "preset: agpo" in problem.message
    assert "advantage: grpo with zeroVariance: agpo" in problem.message


def test_custom_reward_with_bounds_and_correct_is_accepted() -> None:
    resolved = algorithm(
        {
            "rewards": [{"function": "my_rewards:score", "bounds": {"min": -1.0, "max": 2.0}}],
            "correct": {"reward": "my_rewards:score", "threshold": 0.0},
        }
    )
    assert resolved["rewards"][0]["bounds"] == {"min": -1.0, "max": 2.0}
    assert resolved["correct"] == {"reward": "my_rewards:score", "threshold": 0.0}
    # mask does not need the range
    algorithm(
        {
            "zeroVariance": "mask",
            "rewards": [{"function": "my_rewards:score"}],
            "correct": {"reward": "my_rewards:score"},
        }
    )


def test_a_clip_given_in_python_takes_the_presets_other_bound_as_yaml_does() -> None:
    from agpo_api.models import AlgorithmSpec, ClipSpec

    python = AlgorithmSpec(preset="grpo", clip=ClipSpec(low=0.1)).clip
    yaml_doc = AlgorithmSpec.model_validate({"preset": "grpo", "clip": {"low": 0.1}}).clip
    assert python == yaml_doc and yaml_doc is not None and yaml_doc.high == 0.2  # grpo's
