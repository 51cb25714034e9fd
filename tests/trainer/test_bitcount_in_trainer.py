"""The bitcount task as the trainer uses it: the reward it trains and evaluates with accepts
every format the task emits and agrees with the task's grader, and the prompts it warms up
on, trains on and evaluates on come from disjoint splits (never ``test``)."""

from __future__ import annotations

import copy

import pytest

from agpo_api import parse_job
from agpo_trainer.data import builtin_eval_rows, load_examples
from agpo_trainer.experience import correct_rule, reward_terms
from agpo_trainer.rewards import score
from agpo_trainer.tasks import bitcount as bc
from agpo_trainer.warmup import bitcount_batches

from agpo_testlib import MINIMAL

# One hash-chosen bit string per length 2..14: short and long, with and without 1s.
BITS = [p.bits for p in bc.stratified("eval", 1)] + ["0" * 14, "1" * 14]


def bitcount_spec(size: int = 2000) -> object:
    doc = copy.deepcopy(MINIMAL)
    doc["spec"]["dataset"] = {"source": {"builtin": {"task": "bitcount", "size": size}}}
    return parse_job(doc).spec


@pytest.mark.parametrize("bits", BITS)
def test_the_training_reward_accepts_every_emitted_format_and_agrees_with_the_grader(
    bits: str,
) -> None:
    spec = bitcount_spec()
    prompt, right = bc.make_prompt(bits), str(bits.count("1"))
    wrong = str((bits.count("1") + 1) % (len(bits) + 1))
    texts = bc.all_formats(bits)  # every filler length, with and without scratch
    texts += [bc.make_completion(bits, filler=f, scratch=s, answer=wrong)
              for s in (False, True) for f in (0, bc.MAX_FILLER)]  # fmt: skip
    n = len(texts)
    _, components, correct = score(
        [prompt] * n, texts, [right] * n, [len(t) for t in texts], n,
        rewards=reward_terms(spec), correct=correct_rule(spec),  # type: ignore[arg-type]
    )  # fmt: skip
    graded = [bc.grade(prompt, t).correct for t in texts]
    assert graded == [True] * (n - 4) + [False] * 4
    assert correct.tolist() == graded
    assert components["accuracy"].tolist() == [float(g) for g in graded]


def test_warmup_train_and_eval_prompts_are_disjoint_and_never_test() -> None:
    spec = bitcount_spec(size=5000)
    train = {e.prompt for e in load_examples(spec.dataset)}  # type: ignore[attr-defined]
    held = {r["prompt"] for r in builtin_eval_rows(spec.dataset.source.builtin, 4096)}  # type: ignore[attr-defined]
    warm = {p for batch in bitcount_batches(200, seed=0) for p, _ in batch}
    assert held == {p.prompt for p in bc.problems("eval")}  # the whole eval split
    assert len(train) > 1000 and len(warm) > 300  # the warm-up favours short strings
    assert not train & held and not train & warm and not warm & held
    test = {p.prompt for p in bc.problems("test")}
    assert not (train | held | warm) & test
