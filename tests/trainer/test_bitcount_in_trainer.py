"""The bitcount task as the trainer uses it: the reward it trains and evaluates with accepts
every format the task emits and agrees with the task's grader, and the prompts it warms up
on, trains on and evaluates on come from disjoint splits (never ``test``)."""

from __future__ import annotations

from typing import Any

import pytest

from agpo_trainer.data import builtin_eval_rows, load_examples
from agpo_trainer.rewards import judge
from agpo_trainer.tasks import bitcount as bc

from agpo_testlib import resolved_spec

# One hash-chosen bit string per length 2..14: short and long, with and without 1s.
BITS = [p.bits for p in bc.stratified("eval", 1)] + ["0" * 14, "1" * 14]


def bitcount_spec(size: int = 2000) -> Any:
    return resolved_spec(
        {"spec.dataset": {"source": {"builtin": {"task": "bitcount", "size": size}}}}
    )


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
    components, correct = judge(
        [prompt] * n, texts, [right] * n, spec.algorithm, finished=[True] * n
    )
    graded = [bc.grade(prompt, t).correct for t in texts]
    assert graded == [True] * (n - 4) + [False] * 4
    assert correct.tolist() == graded
    assert components["accuracy"].tolist() == [float(g) for g in graded]


def test_warmup_train_and_eval_prompts_are_disjoint_and_never_test() -> None:
    spec = bitcount_spec(size=5000)
    train = {e.prompt for e in load_examples(spec.dataset)}
    held = {r["prompt"] for r in builtin_eval_rows(spec.dataset.source.builtin, 4096)}
    warm = {p for batch in bc.warmup_batches(200, seed=0) for p, _ in batch}
    assert held == {p.prompt for p in bc.problems("eval")}  # the whole eval split
    assert len(train) > 1000 and len(warm) > 300  # the warm-up favours short strings
    assert not train & held and not train & warm and not warm & held
    test = {p.prompt for p in bc.problems("test")}
    assert not (train | held | warm) & test
