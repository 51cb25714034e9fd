"""The builtin wordmath task: problem space, stable splits, buckets, grader, rows, example
turns, format warm-up and registration."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from agpo_api import catalog, parse_job
from agpo_api.catalog import TaskTraits
from agpo_api.models import BuiltinSource
from agpo_trainer.rewards.accuracy import answer_is_correct
from agpo_trainer.rollout.inprocess import InProcessBackend, keeping
from agpo_trainer.runtime import Runtime
from agpo_trainer.tasks import TASKS, WarmupInput, get_task
from agpo_trainer.tasks import wordmath as wm
from agpo_trainer.train import Recording, train

from agpo_testlib import job_doc


def test_at_least_10k_distinct_prompts_every_bucket_and_whole_answers() -> None:
    probs = wm.all_problems()
    assert len(probs) >= 10_000
    assert len({p.prompt for p in probs}) == len(probs)
    assert {p.difficulty for p in probs} == set(wm.DIFFICULTIES)
    assert all(p.answer.isdigit() for p in probs)  # whole numbers >= 0
    counts = Counter(p.difficulty for p in probs)
    assert min(counts.values()) >= 150  # the smallest bucket (one op on single digits): 180


def test_every_answer_is_its_worked_steps_result() -> None:
    for p in wm.all_problems():
        assert 1 <= len(p.steps) <= 3
        values = [int(s.rsplit("= ", 1)[1]) for s in p.steps]
        assert str(values[-1]) == p.answer, p
        for s in p.steps:  # each step is a true equation
            x, op, y, _, z = s.split(" ")
            ops = {"+": int.__add__, "-": int.__sub__, "×": int.__mul__, "/": int.__floordiv__}
            got = ops[op](int(x), int(y))
            assert got == int(z) >= 0 and (op != "/" or int(x) % int(y) == 0), s


@pytest.mark.parametrize(
    ("difficulty", "family"),
    [(1, "plain-add-1d"), (2, "plain-sub-2d1d"), (3, "share-1d"), (4, "plain-mul-sub-1d"),
     (5, "buygive-1d"), (6, "twoprices-1d")],
)  # fmt: skip
def test_buckets_hold_their_families(difficulty: int, family: str) -> None:
    fam = [p for p in wm.all_problems() if p.family == family]
    assert fam and {p.difficulty for p in fam} == {difficulty}
    assert all(wm.difficulty_of(p.prompt) == difficulty for p in fam[:50])


def test_prompts_read_as_english_and_plain_ones_as_expressions() -> None:
    p = wm.problem("Compute 3 + 4.")
    assert (p.answer, p.difficulty, p.steps) == ("7", 1, ("3 + 4 = 7",))
    stories = [p for p in wm.all_problems() if not p.family.startswith("plain")]
    assert all(p.prompt.endswith("?") and p.prompt[0].isupper() for p in stories)
    assert not [
        p.prompt for p in stories if re.search(r"(?<!\d)1 (apples|years|dollars|bags)\b", p.prompt)
    ]
    assert not [p for p in stories if "{" in p.prompt or p.answer == "0"]
    names = [p.prompt.split(" ")[0] for p in stories if p.family.startswith("buy-")]
    assert len(set(names)) > 8  # the surface words vary


def test_unknown_prompt() -> None:
    with pytest.raises(ValueError, match="not a wordmath prompt"):
        wm.difficulty_of("What is 3 + 4 + 5 + 6?")


def test_splits_are_disjoint_cover_everything_and_have_the_fractions() -> None:
    by_split = {s: {p.prompt for p in wm.problems(s)} for s in wm.SPLIT_NAMES}
    names = list(by_split)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not by_split[a] & by_split[b], (a, b)
    total = len(wm.all_problems())
    assert sum(map(len, by_split.values())) == total
    for name, frac in wm.SPLITS:
        assert abs(len(by_split[name]) / total - frac) < 0.01, name


def test_every_split_has_every_bucket() -> None:
    for s in wm.SPLIT_NAMES:
        counts = Counter(p.difficulty for p in wm.problems(s))
        assert set(counts) == set(wm.DIFFICULTIES), s
        assert min(counts.values()) >= 20, (s, counts)


# Hard-coded: the problem space and a prompt's split must never change (results, the example
# turns and the warm-up cache depend on them). sha256's first 8 bytes, not Python's hash().
TOTAL = 37_885
EXPECTED = {
    "Compute 3 + 4.": ("warmup", 459196927583901702, 1),
    "Compute 41 + 8.": ("eval", 14044161339417191950, 2),
    "Work out 87 + 1.": ("warmup", 3153959100251118751, 2),
    "Tom is 3 years old. Zoe is 4 years older than Tom. How old is Zoe?": (
        "train",
        11017535207330365501,
        3,
    ),
}


def test_the_problem_space_is_fixed() -> None:
    assert len(wm.all_problems()) == TOTAL


@pytest.mark.parametrize("prompt", sorted(EXPECTED))
def test_split_of_known_prompts_is_fixed(prompt: str) -> None:
    split, h, difficulty = EXPECTED[prompt]
    assert wm.stable_hash(prompt) == h
    assert wm.split_of(prompt) == split
    assert wm.difficulty_of(prompt) == difficulty


def test_problem_space_and_splits_are_the_same_in_another_process() -> None:
    code = (
        "from agpo_trainer.tasks import wordmath as w;"
        "print(len(w.all_problems()));"
        "print('|'.join(r['prompt'] for r in w.eval_rows(12)))"
    )
    here = f"{len(wm.all_problems())}\n" + "|".join(r["prompt"] for r in wm.eval_rows(12))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == here


def test_eval_rows_are_eval_spread_over_buckets_and_fixed() -> None:
    rows = wm.eval_rows(72)
    assert len(rows) == 72 and rows == wm.eval_rows(72)
    # bucket 1 holds fewer eval problems than a sixth of 600: the other buckets give more
    assert len(wm.eval_rows(600)) >= 600
    assert {wm.split_of(r["prompt"]) for r in rows} == {"eval"}
    assert Counter(r["difficulty"] for r in rows) == {str(d): 12 for d in wm.DIFFICULTIES}
    assert all(wm.answer_of(r["prompt"]) == r["answer"] for r in rows)
    assert len(wm.eval_rows(100)) >= 100


def test_rows_are_train_seeded_and_difficulty_balanced() -> None:
    task = get_task("wordmath")
    rows = task.rows(BuiltinSource(task="wordmath", size=1200, seed=3))
    assert len(rows) == 1200
    assert rows == task.rows(BuiltinSource(task="wordmath", size=1200, seed=3))
    assert rows != task.rows(BuiltinSource(task="wordmath", size=1200, seed=4))
    assert {wm.split_of(r["prompt"]) for r in rows} == {"train"}
    by = Counter(r["difficulty"] for r in rows)
    assert set(by) == {str(d) for d in wm.DIFFICULTIES}
    assert max(by.values()) < 1.5 * min(by.values())


# --------------------------------------------------------------------------- the grader
@pytest.mark.parametrize(
    ("completion", "finished", "correct", "answer"),
    [
        ("4 + 3 = 7\nAnswer: 7", True, True, "7"),
        ("Answer: 7", True, True, "7"),
        ("Answer:7", True, True, "7"),
        ("answer: 7.", True, True, "7"),  # case and a trailing period
        ("**Answer:** 7", True, True, "7"),
        ("**Answer: 7**", True, True, "7"),
        ("Answer: $7$", True, True, "7"),
        ("4 + 3 = 7\nAnswer: 7\n", True, True, "7"),
        ("Answer: 7.0", True, True, "7"),
        ("4 + 3 = 7\nAnswer: 7", False, False, "7"),  # truncated: wrong
        ("4 + 3 = 7\nAns", False, False, None),  # truncated mid-answer
        ("4 + 3 = 7", True, False, None),  # no answer line
        ("The answer is 7.", True, False, None),
        ("Answer: 8", True, False, "8"),  # wrong number
        ("Answer: 77", True, False, "77"),
        ("Answer: 7 apples", True, False, None),  # not a bare number
        ("Answer: 7 or 8", True, False, None),
        ("Answer: 7.5", True, False, None),
        ("Answer: -7", True, False, "-7"),
        ("Answer: 7\nAnswer: 8", True, False, "8"),  # the last answer line counts
        ("Answer: 8\nAnswer: 7", True, True, "7"),
        ("Answer: seven", True, False, None),
    ],
)
def test_grader(completion: str, finished: bool, correct: bool, answer: str | None) -> None:
    g = wm.grade("What is 3 + 4?", completion, "7", finished=finished)
    assert (g.correct, g.answer) == (correct, answer)
    assert g.has_answer_line == ("nswer" in completion and ":" in completion)
    assert wm.reward("What is 3 + 4?", completion, "7", finished=finished) == float(correct)
    assert get_task("wordmath").grade("What is 3 + 4?", completion, "7", finished) is correct


def test_grader_tolerates_thousands_separators() -> None:
    assert wm.grade("", "Answer: 1,234", "1234").correct
    assert wm.grade("", "Answer: 1234", "1234").correct
    assert not wm.grade("", "Answer: 12,34", "1234").correct


def test_reasoning_is_the_text_before_the_last_marker() -> None:
    g = wm.grade("", "2 + 1 = 3\n3 - 1 = 2\nAnswer: 2", "2")
    assert g.reasoning == "2 + 1 = 3\n3 - 1 = 2\n"
    assert wm.grade("", "Answer: 2", "2").reasoning == ""
    assert wm.grade("", "no answer", "2").reasoning == "no answer"


def test_worked_solutions_are_correct_for_the_grader_and_the_accuracy_reward() -> None:
    for p in wm.stratified("warmup", 30):
        text = p.solution()
        assert text.endswith(f"\nAnswer: {p.answer}")
        assert wm.grade(p.prompt, text, p.answer).correct
        assert answer_is_correct(text, p.answer)
        wrong = text.rsplit(" ", 1)[0] + f" {int(p.answer) + 1}"
        assert not wm.grade(p.prompt, wrong, p.answer).correct
        assert not answer_is_correct(wrong, p.answer)


# --------------------------------------------------------------------------- chat and warm-up
def test_example_turns_come_from_the_warmup_split() -> None:
    turns = wm.example_turns(4)
    assert len(turns) == 4 and wm.example_turns() == turns[: wm.EXAMPLE_TURNS]
    for t in turns:
        assert wm.split_of(t["user"]) == "warmup"
        assert t["assistant"] == wm.problem(t["user"]).solution()
    spec = parse_job(_job({"systemPrompt": wm.SYSTEM_PROMPT, "exampleTurns": turns}))
    assert [t.user for t in spec.spec.dataset.example_turns] == [t["user"] for t in turns]


def test_the_chosen_start_is_a_valid_spec() -> None:
    """The wordmath gate's choice (docs/results.md): system prompt, no example turns, a
    16-step format warm-up, 128 completion tokens."""
    assert (wm.EXAMPLE_TURNS, wm.WARMUP_STEPS, wm.MAX_COMPLETION_TOKENS) == (0, 16, 128)
    job = parse_job(
        job_doc(
            {
                "spec.dataset": {
                    "source": {"builtin": {"task": "wordmath"}},
                    "systemPrompt": wm.SYSTEM_PROMPT,
                    "exampleTurns": wm.example_turns(),
                },
                "spec.training.formatWarmupSteps": wm.WARMUP_STEPS,
                "spec.training.maxCompletionTokens": wm.MAX_COMPLETION_TOKENS,
            }
        )
    )
    assert job.spec.dataset.system_prompt == wm.SYSTEM_PROMPT
    assert job.spec.training.format_warmup_steps == 16


def test_warmup_batches_are_warmup_split_seeded_and_templated() -> None:
    batches = wm.warmup_batches(5, seed=0)
    assert len(batches) == 5 and all(len(b) == wm.WARMUP_RECIPE["batch"] for b in batches)
    assert batches == wm.warmup_batches(5, seed=0) != wm.warmup_batches(5, seed=1)
    for prompt, completion in (pair for b in batches for pair in b):
        assert wm.split_of(prompt) == "warmup"
        assert wm.grade(prompt, completion, wm.answer_of(prompt)).correct
    recipe = get_task("wordmath").warmup
    assert recipe is not None and recipe.optimizer is not None and recipe.cache_key
    templated = recipe.batches(WarmupInput(2, 0, [], "Q: {prompt}"))
    assert templated[0][0] == ("Q: " + batches[0][0][0], batches[0][0][1])


# --------------------------------------------------------------------------- registration
def _job(dataset: dict[str, object] | None = None) -> dict[str, object]:
    return job_doc(
        {"spec.dataset": {"source": {"builtin": {"task": "wordmath"}}, **(dataset or {})}}
    )


def test_registered_with_the_catalogs_traits() -> None:
    assert "wordmath" in catalog.TASKS.shipped
    assert catalog.TASKS.traits("wordmath") == TaskTraits(eval_split=True)
    assert TASKS.traits("wordmath") == catalog.TASKS.traits("wordmath")
    task = get_task("wordmath")
    assert task is wm.TASK and task.eval_rows is not None
    assert catalog.TASKS.traits("wordmath").answer_marker == wm.ANSWER_PREFIX
    assert task.difficulty("Compute 3 + 4.") == 1


def test_a_spec_naming_the_task_validates_and_evaluates_its_eval_split() -> None:
    job = parse_job(_job())
    assert job.spec.dataset.source.builtin is not None
    assert job.spec.dataset.source.builtin.task == "wordmath"
    assert job.spec.effective_evaluation() is not None  # its eval split is the default source


@pytest.mark.slow
def test_two_steps_in_the_products_loop_with_its_warmup(tmp_path: Path) -> None:
    """builtin:tiny (byte-level) on wordmath through train(): the task's rows, its format
    warm-up (own optimizer, cached) and its eval split, as a SmolLM2 job uses them."""
    seen = Recording()
    rt = Runtime.single(tmp_path, tmp_path / "cache")
    servers: list[InProcessBackend] = []
    job = job_doc(
        {
            "spec.model.dtype": "float32",
            "spec.dataset": {"source": {"builtin": {"task": "wordmath", "size": 40}}},
            "spec.algorithm": {"groupSize": 2},
            "spec.training": {"steps": 2, "promptsPerStep": 2, "maxCompletionTokens": 8,
                              "learningRate": 1e-3, "maxPromptTokens": 200,
                              "formatWarmupSteps": 2},
            "spec.evaluation": {"prompts": 6, "samples": 0},
            "spec.rollout": {"maxModelLen": 256},
        }
    )  # fmt: skip
    train(parse_job(job), rt, backend=keeping(servers), callbacks=seen)
    assert [s.step for s in seen.steps] == [1, 2]
    tok = servers[0].tokenizer
    trained = {tok.decode(p) for b in seen.batches for p in b.prompt_ids}
    assert {wm.split_of(p) for p in trained} == {"train"}
    assert [(e.step, e.prompts) for e in seen.evals] == [(2, 6)]
    assert list((tmp_path / "cache" / "warmup").glob("wordmath-*.safetensors"))
