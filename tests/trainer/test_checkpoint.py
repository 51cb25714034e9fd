"""Checkpoints are complete or invisible, and only the newest K are kept."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agpo_trainer.checkpoint import (
    CheckpointMeta,
    latest_checkpoint,
    list_checkpoints,
    load_state,
    save_checkpoint,
)
from agpo_trainer.models import build_tiny_model


def test_save_keep_and_resume_state(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    root = tmp_path / "ckpt"
    for step in (2, 4, 6):
        save_checkpoint(
            root,
            meta=CheckpointMeta(step, step, "job"),
            model=model,
            tokenizer=tok,
            state={"cursor": step, "t": torch.arange(3)},
            keep=2,
        )
    assert [p.name for p in list_checkpoints(root)] == ["step-000004", "step-000006"]
    newest = latest_checkpoint(root)
    assert newest is not None
    meta, state = load_state(newest)
    assert meta == CheckpointMeta(6, 6, "job") and state["cursor"] == 6
    # Hugging Face format: loadable as a model on its own
    again = AutoModelForCausalLM.from_pretrained(newest)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_incomplete_checkpoints_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    (root / ".tmp-step-000009").mkdir(parents=True)  # a crash mid-write
    (root / "step-000008").mkdir()  # no checkpoint.json: never completed
    assert latest_checkpoint(root) is None
