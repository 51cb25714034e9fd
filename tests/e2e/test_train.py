"""End to end on CPU: real vLLM server, torchrun with 2 gloo processes, real Prometheus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agpo_api.metrics_table import METRICS
from agpo_trainer.checkpoint import latest_checkpoint
from agpo_trainer.models import resolve_model_path
from agpo_trainer.rollout.client import RolloutClient
from agpo_trainer.rollout.server import VLLMServer

from e2e_support import job_file, prom_query

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROBE = "3+4-2="


def served_logprobs(server: VLLMServer, prompt_ids: list[int]) -> list[float]:
    """Greedy completion log-probs the server computes for a fixed prompt."""
    client = RolloutClient([server.url], server.token, timeout_s=60)
    [c] = client.generate([prompt_ids], n=1, max_tokens=4, temperature=1.0, top_p=1.0, seed=0)
    return c.logprobs, c.token_ids  # type: ignore[return-value]


def hf_logprobs(model_dir: Path, prompt_ids: list[int], completion: list[int]) -> list[float]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return [float(logp[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(completion)]


def weight_version(server: VLLMServer) -> Any:
    r = requests.get(
        f"{server.url}/weight_info", headers={"Authorization": f"Bearer {server.token}"}, timeout=10
    )
    r.raise_for_status()
    return r.json()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_training_updates_served_weights_and_exports_metrics(
    tmp_path: Path,
    vllm_server: VLLMServer,
    start_trainer: Any,
    prometheus: Any,
    cache_dir: Path,
    strategy: str,
) -> None:
    """2 gloo ranks with DDP or FSDP2: the served weights follow the trainer's every step."""
    job = job_file(tmp_path, trainer__strategy=strategy)
    tok = AutoTokenizer.from_pretrained(resolve_model_path("builtin:tiny", cache_dir))
    prompt_ids = tok.encode(PROBE, add_special_tokens=False)

    run = start_trainer(job, [vllm_server.url], vllm_server.token, tmp_path / "run")
    prom = prometheus(run.metrics_port)
    assert run.wait() == 0, run.text()[-3000:]

    steps = run.steps()
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert [s["policyVersion"] for s in steps] == [1, 2, 3, 4]
    assert all(s["weightSyncSeconds"] > 0 for s in steps)

    # The server now serves the trainer's final weights: its version says so, and its
    # log-probs equal a transformers forward pass of the final checkpoint.
    info = weight_version(vllm_server)
    assert str(4) in str(info), info
    final = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert final is not None and final.name == "step-000004"
    after, completion = served_logprobs(vllm_server, prompt_ids)
    expected = hf_logprobs(final, prompt_ids, completion)
    assert after == pytest.approx(expected, abs=2e-3)
    untrained = hf_logprobs(resolve_model_path("builtin:tiny", cache_dir), prompt_ids, completion)
    assert after != pytest.approx(untrained, abs=1e-3), "served weights are still the initial ones"

    # A real Prometheus scraped the trainer while it ran.
    seen_steps = prom_query(prom, "max_over_time(agpo_steps_total[10m])")
    assert seen_steps and 1 <= float(seen_steps[0]["value"][1]) <= 4
    # every gauge of the metrics table that a step without a reference model or GVPO sets
    for m in METRICS:
        if m.kind != "gauge" or not m.prometheus or m.field in NOT_IN_THIS_RUN:
            continue
        name = m.series
        assert prom_query(prom, f"last_over_time({name}[10m])"), f"{name} never scraped"
    versions = prom_query(prom, "max_over_time(agpo_policy_version[10m])")
    assert 0 <= float(versions[0]["value"][1]) <= 4
    hist = prom_query(prom, "max_over_time(agpo_weight_sync_duration_seconds_count[10m])")
    assert float(hist[0]["value"][1]) >= 1


#: Gauges this run leaves unset: GVPO's figure (policyLoss clipped here); the rollout
#: correction's (off here; tests/e2e/test_learning.py scrapes them from a run with it on); the
#: evaluation's (spec.evaluation is off for an arithmetic job); the per-term reward (a
#: labelled series).
NOT_IN_THIS_RUN = {
    "gvpo_mse", "reward_component_mean", "rollout_trainer_kl", "is_weight_mean", "is_masked_ratio",
} | {m.field for m in METRICS if m.source == "eval"}  # fmt: skip


def test_other_algorithm_options_run_end_to_end(
    tmp_path: Path, vllm_server: VLLMServer, start_trainer: Any
) -> None:
    """Dr. GRPO + DAPO-style resampling + a KL penalty (with its reference model)."""
    job = job_file(
        tmp_path,
        algorithm__advantage="dr_grpo",
        algorithm__zeroVariance="resample",
        algorithm__maxResampleRounds=2,
        algorithm__klCoefficient=0.05,
        algorithm__lossAggregation="seq-mean-token-sum-norm",
        algorithm__lengthReward={"type": "overlong", "bufferTokens": 4},
        training__steps=3,
    )
    run = start_trainer(job, [vllm_server.url], vllm_server.token, tmp_path / "run")
    assert run.wait() == 0, run.text()[-3000:]
    steps = run.steps()
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert all(0 <= s["resampleRounds"] <= 2 and len(s["prompts"]) == 8 for s in steps)
    # the reference model is the initial policy: KL is 0 before the first update, then > 0
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert steps[-1]["kl"] > 0
