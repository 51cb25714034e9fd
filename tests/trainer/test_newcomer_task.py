"""A newcomer's change: a new builtin task, in this one file.

"parity": is the number of 1s in a bit string even or odd (``0110?`` -> ``Answer: even``)? The
file generates its problems, splits them by a stable hash into train / eval, grades a
completion, buckets the problems by length, gives a format warm-up, and registers the task (in
a test-local scope: gone after the test, from the trainer's registry and from the contract's
catalog). A spec then names it as ``dataset.source.builtin.task``, and two steps of the
product's own loop (``train`` with the in-process rollout backend) run on it, with the format
warm-up and a held-out evaluation on the task's eval split (the default source of a task that
declares one). No other file knows about it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from agpo_api import parse_job
from agpo_api.catalog import TaskTraits
from agpo_api.models import BuiltinSource
from agpo_trainer import tasks
from agpo_trainer.rollout.inprocess import InProcessBackend, keeping
from agpo_trainer.runtime import Runtime
from agpo_trainer.tasks import Row, Task, WarmupInput
from agpo_trainer.train import Recording, train

from agpo_testlib import job_doc


def answer(bits: str) -> str:
    return "even" if bits.count("1") % 2 == 0 else "odd"


def split(bits: str) -> str:
    return "eval" if tasks.stable_hash(bits + "#parity") % 5 == 0 else "train"


PROBLEMS = ["".join(b) for n in range(2, 7) for b in itertools.product("01", repeat=n)]


def rows(which: str) -> list[Row]:
    return [{"prompt": f"{b}?", "answer": answer(b)} for b in PROBLEMS if split(b) == which]


def train_rows(src: BuiltinSource) -> list[Row]:
    return random.Random(src.seed).sample(rows("train"), min(src.size, len(rows("train"))))


def grade(prompt: str, completion: str, reference: str, finished: bool) -> bool:
    return finished and completion.strip().endswith(f"Answer: {reference}")


def warmup(inp: WarmupInput) -> list[tasks.WarmupBatch]:
    rng = random.Random(inp.seed)
    return [
        [(e.prompt, f"Answer: {rng.choice(['even', 'odd'])}") for e in rng.sample(inp.examples, 4)]
        for _ in range(inp.steps)
    ]


PARITY = Task(
    name="parity",
    rows=train_rows,
    grade=grade,
    difficulty=lambda prompt: len(prompt) - 1,
    eval_rows=lambda n: rows("eval")[:n],
    warmup=tasks.WarmupRecipe(batches=warmup),  # the policy's optimizer, its moments cleared after
)


@pytest.fixture
def parity() -> Iterator[Task]:
    with tasks.TASKS.scope():
        yield tasks.register_task(PARITY, traits=TaskTraits(eval_split=True))


def job() -> dict[str, object]:
    return job_doc(
        {
            "spec.model.dtype": "float32",
            "spec.dataset": {"source": {"builtin": {"task": "parity", "size": 40}}},
            "spec.algorithm": {"groupSize": 2},
            "spec.training": {"steps": 2, "promptsPerStep": 2, "maxCompletionTokens": 8,
                              "learningRate": 1e-3, "maxPromptTokens": 16,
                              "formatWarmupSteps": 2},
            "spec.evaluation": {"prompts": 6, "samples": 0},
            "spec.rollout": {"maxModelLen": 64},
        }
    )  # fmt: skip


@pytest.mark.slow
def test_a_registered_task_trains_two_steps_in_the_products_loop(
    parity: Task, tmp_path: Path
) -> None:
    seen = Recording()
    rt = Runtime.single(tmp_path, tmp_path / "cache")
    servers: list[InProcessBackend] = []
    train(parse_job(job()), rt, backend=keeping(servers), callbacks=seen)
    assert [s.step for s in seen.steps] == [1, 2]
    tok = servers[0].tokenizer
    trained = {tok.decode(p) for b in seen.batches for p in b.prompt_ids}
    assert trained <= {r["prompt"] for r in rows("train")}  # prompts from its train split only
    # evaluated at the end on 6 prompts of its eval split (the task declares one)
    assert [(e.step, e.prompts) for e in seen.evals] == [(2, 6)]


def test_the_task_name_and_its_traits_reach_the_contract(parity: Task) -> None:
    spec = parse_job(job()).spec
    assert spec.dataset.source.builtin is not None
    assert spec.dataset.source.builtin.task == "parity"
    assert spec.effective_evaluation() is not None  # its eval split is the default source


def test_an_unregistered_task_is_refused_naming_the_field() -> None:
    with pytest.raises(
        ValueError, match=r"builtin.task: input should be 'arithmetic', .* or 'wordmath'"
    ):
        parse_job(job())
