"""The bitcount warm-up (the gate's tiny-skew6 recipe in the trainer): warm-up-split prompts
only, mixed formats with the right answers, seeded, and cached: a second run loads the
weights the first one trained instead of training again."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from agpo_api import parse_job
from agpo_api.resolved import resolve
from agpo_trainer.models.tiny import build_tokenizer
from agpo_trainer.policy import Policy
from agpo_trainer.runtime import Runtime
from agpo_trainer.tasks import bitcount
from agpo_trainer.warmup import cache_key, format_warmup

from agpo_testlib import MINIMAL

bitcount_batches = bitcount.warmup_batches
RECIPE = bitcount.TASK.warmup
assert RECIPE is not None


def bitcount_cache_key(spec: Any, steps: int) -> str:
    return cache_key(spec, RECIPE, steps)  # type: ignore[arg-type]


def test_batches_are_warmup_split_mixed_formats_with_right_answers() -> None:
    batches = bitcount_batches(6, seed=0)
    assert len(batches) == 6 and all(len(b) == 64 for b in batches)
    pairs = [pair for b in batches for pair in b]
    assert {bitcount.split_of(p) for p, _ in pairs} == {"warmup"}
    grades = [bitcount.grade(p, c) for p, c in pairs]
    assert all(g.correct and g.well_formed for g in grades)
    assert 0.35 < sum(g.used_scratch for g in grades) / len(grades) < 0.65
    assert {g.filler_tokens for g in grades} == set(range(bitcount.MAX_FILLER + 1))
    short = sum(bitcount.difficulty_of(p) <= 6 for p, _ in pairs) / len(pairs)
    assert short > 0.5  # long strings are drawn less often (weight 0.5 ** (n - 6))
    assert bitcount_batches(6, seed=0) == batches and bitcount_batches(6, seed=1) != batches


def spec(**training: Any) -> Any:
    doc = copy.deepcopy(MINIMAL)
    doc["spec"]["dataset"] = {"source": {"builtin": {"task": "bitcount"}}}
    doc["spec"]["training"] = {"formatWarmupSteps": 3, **training}
    return resolve(parse_job(doc).spec)


def policy(s: Any, cache: Path) -> Policy:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
        tie_word_embeddings=True,
    )  # fmt: skip
    rt = Runtime(
        rank=0, world_size=1, local_rank=0, rollout_urls=[], rollout_token=None,
        checkpoint_dir=Path("/nonexistent"), metrics_port=None, weight_sync_host=None,
        weight_sync_port=0, cache_dir=cache, base_dir=None,
    )  # fmt: skip
    return Policy(
        s, rt, model_dir="", tokenizer=tok, model=Qwen2ForCausalLM(config),
        device=torch.device("cpu"),
    )  # fmt: skip


def test_warmup_trains_once_then_loads_from_the_cache(tmp_path: Path) -> None:
    s = spec()
    first = policy(s, tmp_path)
    before = {k: v.clone() for k, v in first.module.state_dict().items()}
    format_warmup(first, [], s, 3)
    trained = first.module.state_dict()
    assert any(not torch.equal(before[k], trained[k]) for k in before)
    cached = list((tmp_path / "warmup").glob("bitcount-*.safetensors"))
    assert [p.name for p in cached] == [f"bitcount-{bitcount_cache_key(s, 3)}.safetensors"]
    assert not first.optimizer.state  # the RL optimizer is untouched

    second = policy(s, tmp_path)
    format_warmup(second, [], s, 3)
    for k, v in second.module.state_dict().items():
        assert torch.equal(v, trained[k]), k
    assert bitcount_cache_key(spec(seed=1), 3) != bitcount_cache_key(s, 3)
    assert bitcount_cache_key(s, 4) != bitcount_cache_key(s, 3)
