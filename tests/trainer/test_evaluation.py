"""Held-out evaluation: the sets (bitcount's eval split, a hash-chosen fraction that training
then excludes), the figures of a fake rollout client, and their way to Prometheus and
``/status`` through rank 0's metrics server."""

from __future__ import annotations

import dataclasses
import json
import random
import socket
import urllib.request
from typing import Any

import pytest

from agpo_api import parse_job
from agpo_api.progress import TrainerProgress
from agpo_api.resolved import resolve
from agpo_trainer.data import Example, in_holdout, load_examples, split_holdout
from agpo_trainer.evaluation import (
    EVAL_SEED_OFFSET,
    Evaluator,
    evaluation_sets,
    pick,
    reasoning_tokens,
)
from agpo_trainer.metrics import StatusBoard, TrainerMetrics, serve
from agpo_trainer.models.tiny import build_tokenizer
from agpo_trainer.rollout.client import Completion
from agpo_trainer.tasks import bitcount


def job(dataset: dict[str, Any], evaluation: dict[str, Any] | None = None, **training: Any) -> Any:
    spec: dict[str, Any] = {
        "model": {"name": "builtin:tiny"},
        "dataset": {"source": dataset},
        "training": {"maxCompletionTokens": 32, **training},
    }
    if evaluation is not None:
        spec["evaluation"] = evaluation
    return resolve(parse_job({"apiVersion": "agpo.dev/v1alpha1", "kind": "AGPOJob",
                              "metadata": {"name": "ev"}, "spec": spec}).spec)  # fmt: skip


BITCOUNT = {"builtin": {"task": "bitcount", "size": 200}}


def test_bitcount_trains_on_train_and_evaluates_on_eval_by_default() -> None:
    spec = job(BITCOUNT)
    examples = load_examples(spec.dataset)
    train, held = evaluation_sets(spec, examples)
    assert train == examples and len(train) == 200
    assert {bitcount.split_of(e.prompt) for e in train} == {"train"}
    assert len(held) == 128 and {bitcount.split_of(e.prompt) for e in held} == {"eval"}
    assert len({e.prompt for e in held}) == 128  # no repeats
    spread = {bitcount.difficulty_of(e.prompt) for e in held}
    assert spread <= {p.difficulty for p in bitcount.problems("eval")} and len(spread) >= 10
    assert all(e.answer == bitcount.answer_of(e.prompt) for e in held)
    assert evaluation_sets(spec, examples)[1] == held  # fixed, the same at every call


def test_no_evaluation_for_arithmetic_unless_asked_and_off_when_disabled() -> None:
    spec = job({"builtin": {"size": 50}})
    examples = load_examples(spec.dataset)
    assert evaluation_sets(spec, examples) == (examples, [])
    off = job(BITCOUNT, {"atEnd": False})
    assert evaluation_sets(off, load_examples(off.dataset))[1] == []


def test_fraction_holds_rows_out_of_training_with_one_function() -> None:
    spec = job({"builtin": {"size": 400}}, {"source": {"fraction": 0.25}, "prompts": 1000})
    examples = load_examples(spec.dataset)
    train, held = evaluation_sets(spec, examples)
    assert {e.index for e in train}.isdisjoint({e.index for e in held})
    assert len(train) + len(held) == len(examples) and 0.15 < len(held) / len(examples) < 0.35
    assert all(in_holdout(e.prompt, 0.25) for e in held)
    assert not any(in_holdout(e.prompt, 0.25) for e in train)
    assert split_holdout(examples, 0.25) == (train, held)


def test_pick_is_seeded_and_leaves_the_global_rng_alone() -> None:
    examples = [Example(i, f"p{i}", "1") for i in range(100)]
    random.seed(5)
    before = random.getstate()
    a, b = pick(examples, 10, seed=3), pick(examples, 10, seed=3)
    assert a == b and len(a) == 10 and a == sorted(a, key=lambda e: e.index)
    assert random.getstate() == before
    assert pick(examples, 200, seed=3) == examples


def test_reasoning_tokens_are_those_before_the_marker() -> None:
    tok = build_tokenizer()
    assert reasoning_tokens(tok, "..a1b1\nAnswer:2", "Answer:") == 7
    assert reasoning_tokens(tok, "Answer:2", "Answer:") == 0
    assert reasoning_tokens(tok, "abc</think>4", "Answer:") == 3
    assert reasoning_tokens(tok, "no marker", "Answer:") == 9


class FakeClient:
    """Answers every prompt: greedy from ``greedy``, sampled ones from ``sampled`` (text)."""

    def __init__(self, tok: Any, greedy: dict[str, str], sampled: dict[str, list[str]]) -> None:
        self.tok, self.greedy, self.sampled = tok, greedy, sampled
        self.calls: list[dict[str, Any]] = []

    def generate(self, prompts: list[list[int]], *, n: int, **kw: Any) -> list[Completion]:
        self.calls.append({"n": n, **kw})
        out = []
        for i, ids in enumerate(prompts):
            prompt = self.tok.decode(ids)
            texts = [self.greedy[prompt]] if kw["temperature"] == 0 else self.sampled[prompt]
            for j, text in enumerate(texts[:n]):
                tids = [*self.tok.encode(text, add_special_tokens=False), self.tok.eos_token_id]
                out.append(Completion(i, j, list(ids), tids, [0.0] * len(tids), "stop"))
        return out


def evaluator(**evaluation: Any) -> tuple[Evaluator, FakeClient]:
    spec = job(BITCOUNT, {"prompts": 2, "samples": 2, **evaluation})
    held = [Example(0, "a1b1=", "2"), Example(1, "a0b1c0=", "1")]
    tok = build_tokenizer()
    client = FakeClient(
        tok,
        greedy={"a1b1=": "...Answer:2", "a0b1c0=": "Answer:0"},
        sampled={"a1b1=": ["Answer:1", "a1b2\nAnswer:2"], "a0b1c0=": ["Answer:0", "Answer:3"]},
    )
    ev = spec.evaluation
    assert ev is not None
    return Evaluator(spec, ev, tokenizer=tok, client=client, examples=held), client


def test_figures_of_one_evaluation() -> None:
    ev, client = evaluator()
    stats = ev.run(step=4, policy_version=4)
    assert stats.accuracy == 0.5  # greedy: the first right (after filler), the second wrong
    assert stats.mean_at_k == 0.25 and stats.pass_at_k == 0.5
    assert stats.reasoning_tokens == 3.0  # "..." of the one correct greedy answer
    assert stats.prompts == 2 and stats.samples == 2
    assert [c["temperature"] for c in client.calls] == [0.0, 1.0]
    assert client.calls[0]["seed"] != client.calls[1]["seed"]
    assert json.loads(stats.log_line().removeprefix("eval "))["accuracy"] == 0.5


def test_a_truncated_answer_is_wrong_even_when_its_text_is_right() -> None:
    """The grader's rule (truncated = wrong, ``bitcount.grade(finished=False)``) holds in
    evaluation: a completion cut at maxCompletionTokens before its EOS does not count."""
    ev, client = evaluator(samples=0)
    finished = ev.run(step=0, policy_version=0)
    cut = ev.__class__(ev.spec, ev.ev, tokenizer=ev.tokenizer, examples=ev.examples,
                       client=Truncating(client))  # fmt: skip
    truncated = cut.run(step=0, policy_version=0)
    assert bitcount.grade("a1b1=", "...Answer:2").correct  # the right text ...
    assert not bitcount.grade("a1b1=", "...Answer:2", finished=False).correct  # ... cut
    assert (finished.accuracy, truncated.accuracy) == (0.5, 0.0)
    assert truncated.reasoning_tokens is None  # no correct answer left to measure


class Truncating:
    """The same completions, each reported as cut at the token limit."""

    def __init__(self, inner: FakeClient) -> None:
        self.inner = inner

    def generate(self, prompts: list[list[int]], **kw: Any) -> list[Completion]:
        out = self.inner.generate(prompts, **kw)
        return [dataclasses.replace(c, finish_reason="length") for c in out]


def test_when_it_is_due() -> None:
    ev, _ = evaluator(everySteps=5)
    assert [s for s in range(0, 13) if ev.due(s, 12)] == [0, 5, 10, 12]
    at_end, _ = evaluator()
    assert [s for s in range(0, 13) if at_end.due(s, 12)] == [12]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return str(r.read().decode())


def test_eval_figures_reach_prometheus_and_status() -> None:
    metrics = TrainerMetrics()
    board = StatusBoard(TrainerProgress(phase="Running", step=4, total_steps=12))
    port = _free_port()
    server = serve(metrics, board, port, host="127.0.0.1")
    try:
        ev, _ = evaluator()
        result = ev.run(step=4, policy_version=4)
        metrics.record_eval(result)
        board.update(result.progress())
        board.update(TrainerProgress(step=5, reward_mean=0.5))  # a later step keeps them
        text = _get(port, "/metrics")
        for line in ("agpo_eval_step 4.0", "agpo_eval_accuracy 0.5", "agpo_eval_mean_at_k 0.25",
                     "agpo_eval_pass_at_k 0.5", "agpo_eval_reasoning_tokens 3.0"):  # fmt: skip
            assert line in text
        status = json.loads(_get(port, "/status"))
        assert status["step"] == 5
        assert status["evalStep"] == 4 and status["evalAccuracy"] == 0.5
        assert status["evalMeanAtK"] == 0.25 and status["evalPassAtK"] == 0.5
        assert status["evalReasoningTokens"] == 3.0
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "completion,right",
    [("Answer:3", True), ("......Answer:3", True), ("a1b1c2d3\nAnswer:3", True),
     ("..a1b1c2d3\nAnswer:3", True), ("Answer:4", False), ("3", True), ("a1b1c2", False)],
)  # fmt: skip
def test_the_accuracy_reward_reads_the_bitcount_answer_format(completion: str, right: bool) -> None:
    from agpo_trainer.rewards.accuracy import answer_is_correct

    assert answer_is_correct(completion, "3") is right
    assert bitcount.grade("a1b0c1d1=", completion).correct is (right and "Answer:" in completion)


def test_requests_are_chunked_to_a_training_batch_with_per_prompt_seeds() -> None:
    """At most promptsPerStep x groupSize sequences per request batch (no more load on the
    servers than a rollout); prompt i keeps seed base + i * n."""
    ev, client = evaluator()
    spec = job(BITCOUNT, {"prompts": 2, "samples": 2}, promptsPerStep=1)
    ev.spec = dataclasses.replace(spec, algorithm=dataclasses.replace(spec.algorithm, group_size=2))
    chunked = ev.run(step=4, policy_version=4)
    assert [(c["n"], c["seed"]) for c in client.calls] == [
        (1, ev.spec.training.seed + EVAL_SEED_OFFSET),  # 2 greedy sequences: one request batch
        (2, ev.spec.training.seed + EVAL_SEED_OFFSET + 1),  # 2 x 2 sampled: one prompt each
        (2, ev.spec.training.seed + EVAL_SEED_OFFSET + 1 + 2),
    ]
    whole, _ = evaluator()
    assert chunked == dataclasses.replace(
        whole.run(step=4, policy_version=4), seconds=chunked.seconds
    )


def test_an_evaluation_file_on_a_pvc_is_read_where_the_operator_mounts_it(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator mounts ``evaluation.source.file.pvc`` at ``layout.EVAL_DATA_DIR``; the
    trainer reads ``<that>/<subPath>``, not the dataset's ``/data``."""
    import agpo_trainer.evaluation as evaluation

    rows = [{"prompt": f"a{i}b1=", "answer": "1"} for i in range(5)]
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(evaluation, "EVAL_DATA_DIR", str(tmp_path))
    source = {"file": {"pvc": "eval-sets", "subPath": "/sets/eval.jsonl"}}
    spec = job(BITCOUNT, {"source": source})
    assert evaluation.eval_file_in_pod(spec.evaluation.source) == f"{tmp_path}/sets/eval.jsonl"
    _, held = evaluation_sets(spec, load_examples(spec.dataset))
    assert [e.answer for e in held] == ["1"] * 5 and held[0].prompt.startswith("a0b1")
