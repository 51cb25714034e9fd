"""What the model sees of a prompt, and what is scored of a completion.

:class:`PromptEncoder` turns a dataset row's (templated) prompt into token ids: through the
tokenizer's chat template when the dataset has a system prompt or few-shot example turns
(``dataset.systemPrompt``, ``dataset.exampleTurns``), as plain text otherwise. The chat
template is rendered to text and then encoded without adding special tokens (the template
writes the ones it wants), as TRL does: the same ids whatever ``apply_chat_template``'s
return type is (transformers 5 returns a ``BatchEncoding`` where 4.x returned a list).

:func:`scored_text` is the text of a completion that rewards and graders read: the decoded
tokens, cut before the first stop string (``training.stop``; vLLM stops there but returns the
stop string's tokens, which stay in what the trainer trains on).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agpo_api.models import DatasetSpec


class PromptError(ValueError):
    """A prompt cannot be encoded as the dataset asks (a permanent error: one line)."""


class PromptEncoder:
    """Token ids of a prompt as the model sees it (see the module docstring)."""

    def __init__(self, tokenizer: Any, dataset: DatasetSpec) -> None:
        self.tokenizer = tokenizer
        self.system = dataset.system_prompt
        self.turns = [
            m
            for t in dataset.example_turns
            for m in (
                {"role": "user", "content": t.user},
                {"role": "assistant", "content": t.assistant},
            )
        ]
        self.chat = self.system is not None or bool(self.turns)
        if self.turns and not getattr(tokenizer, "chat_template", None):
            raise PromptError(
                "spec.dataset.exampleTurns needs a tokenizer with a chat template (this model's "
                "has none); write the examples into dataset.promptTemplate instead"
            )

    def messages(self, prompt: str) -> list[dict[str, str]]:
        """The chat: the system prompt, the example turns, then the prompt."""
        system = [] if self.system is None else [{"role": "system", "content": self.system}]
        return [*system, *self.turns, {"role": "user", "content": prompt}]

    def __call__(self, prompt: str) -> list[int]:
        tok = self.tokenizer
        if not self.chat or not getattr(tok, "chat_template", None):
            text = f"{self.system}\n{prompt}" if self.system else prompt
            return list(tok.encode(text, add_special_tokens=False))
        try:
            rendered = tok.apply_chat_template(
                self.messages(prompt), add_generation_prompt=True, tokenize=False
            )
        except Exception as err:  # jinja2's TemplateError and friends: the template refuses
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise PromptError(
                "spec.dataset.systemPrompt/exampleTurns: the model's chat template refused the "
                f"conversation ({first}); drop what it does not support (e.g. the system prompt)"
            ) from None
        if not isinstance(rendered, str):
            raise PromptError(
                f"the tokenizer's chat template rendered a {type(rendered).__name__}, not text; "
                "check spec.model.tokenizer"
            )
        return list(tok.encode(rendered, add_special_tokens=False))


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` before the first occurrence of any stop string (all of it when none occurs)."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(cuts)] if cuts else text


def scored_text(tokenizer: Any, token_ids: Sequence[int], stops: Sequence[str]) -> str:
    """The text rewards and graders read: the decoded completion (special tokens skipped),
    cut before the first stop string."""
    return cut_at_stop(tokenizer.decode(list(token_ids), skip_special_tokens=True), stops)
