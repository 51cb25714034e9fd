"""The builtin tiny model: real HF save/load paths, char-level tokenizer, determinism."""

from __future__ import annotations

import string
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="needs torch")
transformers = pytest.importorskip("transformers", reason="needs transformers")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="needs safetensors")

from agpo_trainer.models import (  # noqa: E402
    BUILTIN_TINY,
    TinyModelSpec,
    build_tiny_model,
    resolve_model_path,
)
from agpo_trainer.models.tiny import encode  # noqa: E402


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors_torch.load_file(str(model_dir / "model.safetensors"))


def test_saved_in_hf_format_and_loads_with_auto_classes(tiny_model_dir: Path) -> None:
    assert (tiny_model_dir / "model.safetensors").is_file()
    config = transformers.AutoConfig.from_pretrained(tiny_model_dir)
    assert config.model_type == "qwen2"
    assert config.hidden_size // config.num_attention_heads >= 32  # vLLM CPU attention
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.vocab_size == len(tok)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000  # starts fast in vLLM


def test_tokenizer_is_character_level_and_round_trips(tiny_model_dir: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    text = string.printable.replace("\x0b", "").replace("\x0c", "") + "\n2+2=4\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per ASCII character, newline and space too
    assert tok.decode(ids) == text
    for special in ("bos", "eos", "pad"):
        token_id = getattr(tok, f"{special}_token_id")
        assert token_id is not None and token_id < 4
    assert encode(tok, ["ab"]) == [[tok.bos_token_id, *tok("ab")["input_ids"]]]


def test_build_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = _weights(build_tiny_model(tmp_path / "a", seed=7))
    b = _weights(build_tiny_model(tmp_path / "b", seed=7))
    c = _weights(build_tiny_model(tmp_path / "c", seed=8))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_generates_and_sampling_is_reproducible(tiny_model_dir: Path) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = torch.tensor(encode(tok, ["1+1="]))

    def sample(seed: int) -> list[int]:
        torch.manual_seed(seed)
        out = model.generate(prompt, max_new_tokens=12, do_sample=True, temperature=1.0)
        return out[0, prompt.shape[1] :].tolist()

    greedy = model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert greedy.shape[1] > prompt.shape[1]
    assert torch.equal(greedy, model.generate(prompt, max_new_tokens=12, do_sample=False))
    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_resolve_builtin_builds_once_and_passes_paths_through(tmp_path: Path) -> None:
    first = resolve_model_path(BUILTIN_TINY, tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    second = resolve_model_path(BUILTIN_TINY, tmp_path)
    assert first == second
    assert (second / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp dirs left
    assert resolve_model_path("/models/qwen", tmp_path) == Path("/models/qwen")
    with pytest.raises(ValueError, match="unknown builtin"):
        resolve_model_path("builtin:huge", tmp_path)


def test_spec_rejects_head_dim_below_32() -> None:
    with pytest.raises(ValueError, match="head_dim"):
        TinyModelSpec(hidden_size=64, num_heads=4, num_kv_heads=1)


def test_module_cli_builds_the_same_model_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    from agpo_trainer.models.tiny import main

    out = tmp_path / "model"
    assert main([str(out)]) == 0
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert main([str(out)]) == 0  # a restarted init container does not rebuild
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    # Same bytes as the trainer's `builtin:tiny` (seed 0): both pods serve one model.
    assert (out / "model.safetensors").read_bytes() == (
        tiny_model_dir / "model.safetensors"
    ).read_bytes()
