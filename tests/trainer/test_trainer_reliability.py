"""The trainer's side of "a job makes progress or says why not": its termination line, the
prompt draw that cannot spin, and `agpo run`'s preflight and resume lines (no servers)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from agpo_api.models import AGPOJob
from agpo_api.resolved import resolve
from agpo_api.termination import ExitCode, FailureKind, format_termination, parse_termination
from agpo_trainer.__main__ import main, termination_path, write_termination
from agpo_trainer.data import DataError, PromptSampler, load_examples
from agpo_trainer.local.restarts import start_over
from agpo_trainer.preflight import LaunchError, preflight

JOB: dict[str, Any] = {
    "apiVersion": "agpo.dev/v1alpha1",
    "kind": "AGPOJob",
    "metadata": {"name": "rel"},
    "spec": {
        "model": {"name": "builtin:tiny", "dtype": "float32"},
        "dataset": {"source": {"builtin": {"size": 20}}, "promptTemplate": "{prompt}="},
        "algorithm": {"groupSize": 2},
        "training": {
            "steps": 2,
            "promptsPerStep": 2,
            "maxPromptTokens": 32,
            "maxCompletionTokens": 8,
        },
        "trainer": {"procsPerNode": 1, "gpusPerNode": 0},
        "rollout": {"gpusPerReplica": 0, "maxModelLen": 64, "weightSync": {"backend": "gloo"}},
    },
}


def job(**spec: Any) -> AGPOJob:
    doc = json.loads(json.dumps(JOB))
    for dotted, value in spec.items():
        node = doc["spec"]
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return AGPOJob.model_validate(doc)


# --------------------------------------------------------------------------- termination log
def test_a_permanent_failure_writes_its_line_and_exits_78(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv("AGPO_TERMINATION_LOG", str(log))
    monkeypatch.setenv("AGPO_ROLLOUT_URLS", "http://127.0.0.1:1")
    monkeypatch.setenv("AGPO_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    path = tmp_path / "job.yaml"
    doc = job(dataset__source={"file": {"path": str(tmp_path / "missing.jsonl")}})
    path.write_text(yaml.safe_dump(doc.model_dump(by_alias=True, exclude_none=True)))
    assert main(["--job", str(path)]) == ExitCode.PERMANENT
    parsed = parse_termination(log.read_text())
    assert parsed is not None and parsed.kind == FailureKind.PERMANENT
    assert "missing.jsonl does not exist" in parsed.reason
    err = capsys.readouterr().err
    assert "agpo-train: error (rank 0):" in err and "Traceback" not in err


def test_an_invalid_job_is_permanent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv("AGPO_TERMINATION_LOG", str(log))
    path = tmp_path / "job.yaml"
    path.write_text("apiVersion: agpo.dev/v1alpha1\nkind: AGPOJob\nspec: {}\n")
    assert main(["--job", str(path)]) == ExitCode.PERMANENT
    assert log.read_text().startswith("permanent: ")


def test_a_later_transient_line_does_not_hide_a_permanent_cause(tmp_path: Path) -> None:
    """Ranks that die of the first one's failure (a broken collective) write after it."""
    log = tmp_path / "termination-log"
    write_termination(log, format_termination(FailureKind.PERMANENT, "row 3 has no field"))
    write_termination(log, format_termination(FailureKind.TRANSIENT, "Connection reset"))
    assert log.read_text() == "permanent: row 3 has no field\n"
    write_termination(tmp_path / "t", format_termination(FailureKind.TRANSIENT, "a"))
    write_termination(tmp_path / "t", format_termination(FailureKind.PERMANENT, "b"))
    assert (tmp_path / "t").read_text() == "permanent: b\n"


def test_termination_path_is_the_env_var_else_the_kubelet_file_if_it_exists(
    tmp_path: Path,
) -> None:
    assert termination_path({"AGPO_TERMINATION_LOG": str(tmp_path / "x")}) == tmp_path / "x"
    expected = Path("/dev/termination-log") if Path("/dev/termination-log").is_file() else None
    assert termination_path({}) == expected


# --------------------------------------------------------------------------- the prompt draw
def test_the_draw_fails_when_no_prompt_fits_instead_of_spinning() -> None:
    """Before: `Experience._draw` looped forever (measured: 100 % CPU for 400 s)."""
    from agpo_trainer.experience import Experience
    from agpo_trainer.metrics import TrainerMetrics

    spec = resolve(job(training__maxPromptTokens=1).spec)
    examples = load_examples(spec.dataset)

    class Bytes:
        chat_template = None

        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return list(text.encode())

    exp = Experience(
        spec,
        tokenizer=Bytes(),
        sampler=PromptSampler(examples, 0),
        client=None,
        metrics=TrainerMetrics(),
    )
    errors: list[BaseException] = []

    def draw() -> None:
        try:
            exp._draw(2, [])
        except BaseException as err:  # handed to the test thread
            errors.append(err)

    worker = threading.Thread(target=draw, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the prompt draw spins when no prompt fits"
    assert len(errors) == 1 and isinstance(errors[0], DataError), errors
    assert "spec.training.maxPromptTokens=1" in str(errors[0])


# --------------------------------------------------------------------------- preflight
def preflight_error(tmp_path: Path, the_job: AGPOJob) -> str:
    with pytest.raises(LaunchError) as info:
        preflight(the_job, tmp_path, tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_preflight_no_prompt_fits(tmp_path: Path) -> None:
    message = preflight_error(tmp_path, job(training__maxPromptTokens=2))
    assert "spec.training.maxPromptTokens=2" in message


def test_preflight_empty_and_malformed_jsonl(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "1", "answer": "1"}\n{"prompt": 1,,}\n')
    empty = job(dataset__source={"file": {"path": "empty.jsonl"}})
    assert "is empty" in preflight_error(tmp_path, empty)
    bad = job(dataset__source={"file": {"path": "bad.jsonl"}})
    assert "line 2 is not valid JSON" in preflight_error(tmp_path, bad)


def test_preflight_model_directory_that_does_not_exist(tmp_path: Path) -> None:
    """Before: vLLM started and ended with `exited with code 1 during startup`."""
    missing = job(model={"name": "mine", "dtype": "float32", "source": {"path": "/no/model"}})
    message = preflight_error(tmp_path, missing)
    assert message == "spec.model.source.path: model directory /no/model does not exist"
    by_name = job(model={"name": str(tmp_path / "nowhere"), "dtype": "float32"})
    assert "spec.model.name: model directory" in preflight_error(tmp_path, by_name)


def test_preflight_hub_model_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    the_job = job(model={"name": "someorg/some-model", "dtype": "float32"})
    message = preflight_error(tmp_path, the_job)
    assert "'someorg/some-model'" in message and "cannot be fetched" in message


def test_preflight_hub_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub_constants

    from agpo_trainer.rollout.server import free_port

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    the_job = job(model={"name": "someorg/some-model", "dtype": "float32"})
    message = preflight_error(tmp_path, the_job)
    assert "cannot be fetched from the Hugging Face Hub from this machine" in message, message


def test_preflight_passes_for_the_tiny_job(tmp_path: Path) -> None:
    assert Path(preflight(job(), tmp_path, tmp_path / "cache"), "config.json").is_file()


# --------------------------------------------------------------------------- resume / --fresh
def test_start_over_says_where_it_resumes_and_fresh_moves_checkpoints_aside(
    tmp_path: Path,
) -> None:
    root = tmp_path / "checkpoints"
    assert start_over(root, fresh=False, resume=True) == "starting at step 0 (no checkpoint yet)"
    (root / "step-000005").mkdir(parents=True)
    (root / "step-000005" / "checkpoint.json").write_text(
        json.dumps({"step": 5, "policy_version": 5, "job": "j"})
    )
    line = start_over(root, fresh=False, resume=True)
    assert line.startswith("resuming from step 5 (checkpoint ") and "--fresh" in line
    line = start_over(root, fresh=True, resume=True)
    assert "moved the old checkpoints" in line and "starting at step 0" in line
    assert not root.exists()
    (aside,) = tmp_path.glob("checkpoints.*")
    assert (aside / "step-000005" / "checkpoint.json").is_file()
