"""Prompts through a chat template, few-shot example turns, stop strings and the one truncation
rule (a truncated completion is wrong, in the training reward as in evaluation); prompt and
response-shape errors are permanent (one line, no restart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from agpo_api.models import DatasetSpec
from agpo_api.termination import FailureKind, parse_termination
from agpo_trainer.__main__ import ExitCode, main
from agpo_trainer.models.tiny import build_tokenizer
from agpo_trainer.prompts import PromptEncoder, PromptError, cut_at_stop, scored_text
from agpo_trainer.rewards import judge
from agpo_trainer.rollout.client import ResponseShapeError, parse_completion_response
from agpo_trainer.rollout.inprocess import InProcessBackend

from agpo_testlib import job_doc, resolved_spec

#: ChatML, as SmolLM2 and Qwen write it.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer() -> Any:
    """The builtin byte-level tokenizer with ChatML's special tokens and template."""
    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def dataset(**fields: Any) -> DatasetSpec:
    return DatasetSpec.model_validate({"source": {"builtin": {}}, **fields})


def test_the_chat_template_gives_one_flat_list_of_ids(chat_tokenizer: Any) -> None:
    """transformers 5's apply_chat_template(tokenize=True) returns a BatchEncoding, whose
    list() is its keys: the old encoder sent ['input_ids', 'attention_mask'] as a prompt."""
    encode = PromptEncoder(
        chat_tokenizer,
        dataset(
            systemPrompt="Add.",
            exampleTurns=[{"user": "1+1", "assistant": "Answer: 2"}],
        ),
    )
    ids = encode("2+3")
    assert all(isinstance(i, int) for i in ids)
    text = chat_tokenizer.decode(ids)
    assert text == (
        "<|im_start|>system\nAdd.<|im_end|>\n<|im_start|>user\n1+1<|im_end|>\n"
        "<|im_start|>assistant\nAnswer: 2<|im_end|>\n<|im_start|>user\n2+3<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    special = chat_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == special and ids.count(special) == 5  # one token each, not characters
    rendered = chat_tokenizer.apply_chat_template(
        encode.messages("2+3"), add_generation_prompt=True, tokenize=True
    )
    assert not isinstance(rendered, list) and ids == list(rendered["input_ids"])


def test_without_system_prompt_or_turns_the_prompt_is_plain_text(chat_tokenizer: Any) -> None:
    assert PromptEncoder(chat_tokenizer, dataset())("a1b0=") == chat_tokenizer.encode(
        "a1b0=", add_special_tokens=False
    )


def test_example_turns_need_a_chat_template() -> None:
    tok = build_tokenizer()
    tok.chat_template = None
    with pytest.raises(PromptError, match=r"^spec.dataset.exampleTurns needs a tokenizer"):
        PromptEncoder(tok, dataset(exampleTurns=[{"user": "q", "assistant": "a"}]))


def test_scored_text_ends_before_the_first_stop_string(chat_tokenizer: Any) -> None:
    assert cut_at_stop("Answer: 4\nQ: next", ["\nQ:", "###"]) == "Answer: 4"
    assert cut_at_stop("Answer: 4", ["\nQ:"]) == "Answer: 4"
    ids = chat_tokenizer.encode("Answer: 4\nQ: 5+5", add_special_tokens=False)
    assert scored_text(chat_tokenizer, ids, ["\nQ:"]) == "Answer: 4"
    assert scored_text(chat_tokenizer, ids, []) == "Answer: 4\nQ: 5+5"


def test_the_in_process_backend_stops_at_a_stop_string() -> None:
    """Cut after the token that completes the stop string, which stays; then finished."""

    class Words:  # decodes ids to characters
        eos_token_id, pad_token_id = 0, 0

        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return "".join(chr(96 + i) for i in ids if i)

    backend = InProcessBackend(torch.nn.Identity(), Words())
    ids, lps, finished = backend._stopped([1, 2, 3, 4, 5], [0.0] * 5, False, ["bc"])
    assert (ids, finished) == ([1, 2, 3], True) and len(lps) == 3
    assert backend._stopped([1, 2], [0.0] * 2, False, ["z"]) == ([1, 2], [0.0, 0.0], False)


def test_a_truncated_completion_is_wrong_in_the_training_reward_too() -> None:
    algo = resolved_spec().algorithm
    texts = ["\\boxed{4}", "\\boxed{4}", "\\boxed{5}"]
    components, correct = judge(["q"] * 3, texts, ["4"] * 3, algo, finished=[True, False, True])
    assert correct.tolist() == [True, False, False]
    assert components["accuracy"].tolist() == [1.0, 0.0, 0.0]


def test_a_malformed_server_answer_is_a_response_shape_error() -> None:
    two = {"choices": [{"index": i, "token_ids": [1], "logprobs": {"token_logprobs": [0.0]}}
                       for i in range(2)]}  # fmt: skip
    with pytest.raises(ResponseShapeError, match="expected 1 choices for prompt 0, got 2"):
        parse_completion_response(two, prompt_index=0, prompt_token_ids=[1], n=1)


@pytest.mark.parametrize(
    "error", [ResponseShapeError("expected 1 choices for prompt 2, got 2"), PromptError("x")]
)
def test_prompt_and_response_shape_errors_are_permanent(
    error: Exception, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agpo_trainer.train

    def broken(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(agpo_trainer.train, "train", broken)
    log = tmp_path / "termination-log"
    monkeypatch.setenv("AGPO_TERMINATION_LOG", str(log))
    monkeypatch.setenv("AGPO_ROLLOUT_URLS", "http://127.0.0.1:1")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_doc()))
    assert main(["--job", str(job)]) == ExitCode.PERMANENT
    parsed = parse_termination(log.read_text())
    assert parsed is not None and parsed.kind == FailureKind.PERMANENT
    assert parsed.reason == str(error)


def test_a_chat_template_that_refuses_is_one_prompt_error_line(chat_tokenizer: Any) -> None:
    import copy

    tok = copy.deepcopy(chat_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}"
    )
    with pytest.raises(PromptError, match=r"chat template refused .*System role not supported"):
        PromptEncoder(tok, dataset(systemPrompt="Add."))("1+1")


def test_stop_strings_reach_every_request() -> None:
    from agpo_trainer.data import PromptSampler, load_examples
    from agpo_trainer.experience import Experience
    from agpo_trainer.metrics import TrainerMetrics
    from agpo_trainer.rollout.client import Completion, build_completion_request

    body = build_completion_request([1], n=1, max_tokens=4, temperature=1.0, top_p=1.0,
                                    seed=0, stop=["\nQ:"])  # fmt: skip
    assert body["stop"] == ["\nQ:"]
    plain = build_completion_request([1], n=1, max_tokens=4, temperature=1.0, top_p=1.0, seed=0)
    assert "stop" not in plain  # a job without stop strings sends what it always sent

    asked: list[dict[str, Any]] = []

    class Client:
        def generate(self, prompts: Any, **kwargs: Any) -> list[Completion]:
            asked.append(kwargs)
            return [Completion(i // kwargs["n"], i % kwargs["n"], list(p), [2], [0.0], "stop")
                    for i, p in enumerate(q for q in prompts for _ in range(kwargs["n"]))]  # fmt: skip

    spec = resolved_spec({"spec.training.stop": ["\nQ:"], "spec.algorithm.groupSize": 2,
                          "spec.training.promptsPerStep": 2})  # fmt: skip
    tok = build_tokenizer()
    examples = load_examples(spec.dataset)
    Experience(spec, tokenizer=tok, sampler=PromptSampler(examples, 0), client=Client(),
               metrics=TrainerMetrics()).collect(0)  # fmt: skip
    assert asked and asked[0]["stop"] == ["\nQ:"]


def test_a_malformed_choice_is_a_response_shape_error() -> None:
    null = {"choices": [{"index": 0, "token_ids": [1], "logprobs": {"token_logprobs": [None]}}]}
    with pytest.raises(ResponseShapeError, match="prompt 0: malformed choice"):
        parse_completion_response(null, prompt_index=0, prompt_token_ids=[1], n=1)
    missing = {"choices": [{"token_ids": [1], "logprobs": {"token_logprobs": [0.0]}}]}
    with pytest.raises(ResponseShapeError, match="prompt 0: malformed choice"):
        parse_completion_response(missing, prompt_index=0, prompt_token_ids=[1], n=1)
