"""Evaluation in a real run (torchrun + vLLM): it reports held-out figures and changes no
training batch (same seed, evaluation on vs off: identical step records)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agpo_trainer.rollout.server import VLLMServer

from e2e_support import job_file

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: The step-record fields a changed batch or update would change.
SAME = ("step", "rewardMean", "accuracy", "completionTokensMean", "loss", "prompts")


def eval_records(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line.split(" eval ", 1)[1]) for line in text.splitlines() if " eval {" in line
    ]


def test_evaluation_reports_and_does_not_change_training(
    tmp_path: Path, vllm_server: VLLMServer, start_trainer: Any
) -> None:
    held_out = tmp_path / "eval.jsonl"
    held_out.write_text(
        "".join(
            json.dumps({"prompt": f"{a}+{b}", "answer": str(a + b)}) + "\n"
            for a in range(5)
            for b in range(5)
        )
    )
    runs = {}
    for name, extra in {
        "off": {},
        "on": {
            "evaluation": {
                "everySteps": 2,
                "prompts": 12,
                "samples": 2,
                "source": {"file": {"path": str(held_out)}},
            }
        },
    }.items():
        work = tmp_path / name
        work.mkdir()
        job = job_file(work, training__steps=3, **extra)
        run = start_trainer(job, [vllm_server.url], vllm_server.token, work / "run")
        assert run.wait() == 0, run.text()[-3000:]
        runs[name] = run
    off, on = runs["off"].steps(), runs["on"].steps()
    assert [s["step"] for s in on] == [1, 2, 3]
    assert [{k: s[k] for k in SAME} for s in on] == [{k: s[k] for k in SAME} for s in off]
    assert eval_records(runs["off"].text()) == []
    evals = eval_records(runs["on"].text())
    assert [e["step"] for e in evals] == [0, 2, 3]  # the start, every 2 steps, the end
    for e in evals:
        assert e["prompts"] == 12 and e["samples"] == 2
        assert 0 <= e["accuracy"] <= 1 and 0 <= e["meanAtK"] <= e["passAtK"] <= 1
