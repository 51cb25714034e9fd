"""Rollout client: sample `n` completions per prompt from vLLM servers, as token ids.

Prompts go to `/v1/completions` as token ids and completions come back as the sampled token
ids (`return_token_ids`) with their log-probs (`logprobs=0`: the sampled token's only).
Nothing is re-tokenized, so the trainer scores exactly the tokens the policy sampled and
the returned log-probs are the behaviour-policy term of the importance ratio.

One request per prompt (with `n = group size`) keeps a group on one replica (its prefix is
cached once) and lets requests spread round-robin over all replicas, concurrently.

The server list may change between calls (an elastic pool sets it at each step boundary). A
request whose server cannot be reached or drops the answer (killed, scaled away) goes to the
next server: its seed is the prompt's, not the server's, so the completions and the data
order stay those of an uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from agpo_trainer.rollout.http import NO_RETRY, HttpCallError, RetryPolicy, call


class RolloutError(RuntimeError):
    """Generation failed for a reason of the moment (a server unreachable past the timeout)."""


class ResponseShapeError(ValueError):
    """A server answered in a shape the trainer cannot use (the wrong number of choices, token
    ids without their log-probs, another prompt echoed): the same request gets the same answer,
    so this is permanent, not retried."""


@dataclass(frozen=True)
class Completion:
    """One sampled completion of one prompt.

    `logprobs[i]` is the log-probability of `token_ids[i]` under the distribution it was
    sampled from (the server runs with `--logprobs-mode processed_logprobs`, i.e. after
    temperature). `finish_reason` is "stop" (EOS or a stop token; the EOS id is the last
    entry of `token_ids`) or "length" (truncated at `max_tokens`).
    """

    prompt_index: int
    sample_index: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str = ""

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


def build_completion_request(
    prompt_token_ids: Sequence[int],
    *,
    n: int,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    stop_token_ids: Sequence[int] | None = None,
    model: str | None = None,
    stop: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The JSON body for `/v1/completions`. Pure."""
    body: dict[str, Any] = {
        "prompt": list(prompt_token_ids),
        "n": n,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "logprobs": 0,  # the sampled token's log-prob, no alternatives
        "return_token_ids": True,
        "skip_special_tokens": False,
    }
    if seed is not None:
        body["seed"] = seed
    if stop_token_ids:
        body["stop_token_ids"] = list(stop_token_ids)
    if stop:  # vLLM cuts the text before it but returns its tokens (prompts.scored_text)
        body["stop"] = list(stop)
    if model:
        body["model"] = model
    return body


def parse_completion_response(
    data: dict[str, Any], *, prompt_index: int, prompt_token_ids: Sequence[int], n: int
) -> list[Completion]:
    """Completions of one prompt, ordered by sample index; :class:`ResponseShapeError` if
    malformed."""
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) != n:
        got = len(choices) if isinstance(choices, list) else "no"
        raise ResponseShapeError(f"expected {n} choices for prompt {prompt_index}, got {got}")
    try:
        ordered = sorted(choices, key=lambda c: int(c["index"]))
        out = [_completion(c, prompt_index, prompt_token_ids) for c in ordered]
    except ResponseShapeError:
        raise
    except (KeyError, TypeError, ValueError) as err:  # a missing index, a null log-prob, ...
        raise ResponseShapeError(
            f"prompt {prompt_index}: malformed choice ({type(err).__name__}: {err})"
        ) from None
    return out


def _completion(choice: Any, prompt_index: int, prompt_token_ids: Sequence[int]) -> Completion:
    token_ids = [int(t) for t in choice.get("token_ids") or []]
    lp = choice.get("logprobs") or {}
    logprobs = [float(x) for x in lp.get("token_logprobs") or []]
    if len(logprobs) != len(token_ids):
        raise ResponseShapeError(
            f"prompt {prompt_index}: {len(token_ids)} token ids but {len(logprobs)} "
            "log-probs (is the server's --max-logprobs 0?)"
        )
    echoed = choice.get("prompt_token_ids")
    if echoed is not None and list(echoed) != list(prompt_token_ids):
        raise ResponseShapeError(f"prompt {prompt_index}: server echoed different prompt ids")
    return Completion(
        prompt_index=prompt_index,
        sample_index=int(choice["index"]),
        prompt_token_ids=list(prompt_token_ids),
        token_ids=token_ids,
        logprobs=logprobs,
        finish_reason=str(choice.get("finish_reason") or ""),
        text=str(choice.get("text") or ""),
    )


class RolloutClient:
    """Generates groups of completions over one or more vLLM servers.

    `timeout_s` bounds each prompt's request including retries; while a server is
    unavailable (connection refused/reset, 502/503/504) the request goes to the next server,
    and when none answers it is tried again with exponential backoff, then fails with a
    `RolloutError` naming the URL.
    """

    def __init__(
        self,
        urls: Sequence[str],
        token: str | None = None,
        *,
        timeout_s: float = 600.0,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 64,
        model: str | None = None,
    ) -> None:
        self.set_urls(urls)  # may be empty until an elastic pool has a server
        self.token = token
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.max_concurrency = max_concurrency
        self.model = model

    def set_urls(self, urls: Sequence[str]) -> None:
        """The servers the next :meth:`generate` spreads its prompts over (in-flight calls
        keep the list they started with)."""
        self.urls = [u.rstrip("/") for u in urls]

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        *,
        n: int,
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[Completion]:
        """`n` completions per prompt, ordered by (prompt index, sample index).

        With `seed`, prompt `i` uses seed `seed + i * n` (vLLM gives sample `j` of a
        request `seed + j`), so every completion has its own reproducible stream wherever
        it is served.
        """
        if n < 1 or max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1, got n={n} max_tokens={max_tokens}")
        if not prompt_token_ids:
            return []
        urls = list(self.urls)
        if not urls:
            raise RolloutError("rollout failed: no rollout server serves the current weights")
        pool = ThreadPoolExecutor(
            max_workers=min(self.max_concurrency, len(prompt_token_ids)),
            thread_name_prefix="rollout",
        )
        futures: list[Future[list[Completion]]] = []
        try:
            for i, prompt in enumerate(prompt_token_ids):
                body = build_completion_request(
                    prompt,
                    n=n,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    seed=None if seed is None else seed + i * n,
                    stop_token_ids=stop_token_ids,
                    model=self.model,
                    stop=stop,
                )
                order = urls[i % len(urls) :] + urls[: i % len(urls)]  # round-robin first
                futures.append(pool.submit(self._one, order, body, i, prompt, n))
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]
            return [c for f in futures for c in f.result()]
        finally:
            # On failure do not wait for the other prompts' requests: they end on their
            # own timeouts, and the caller gets the first error now.
            pool.shutdown(wait=False, cancel_futures=True)

    def _one(
        self, order: list[str], body: dict[str, Any], index: int, prompt: Sequence[int], n: int
    ) -> list[Completion]:
        """One prompt's request: to ``order[0]``, else the next server that answers."""
        response = self._post(order, body)
        return parse_completion_response(
            response.json(), prompt_index=index, prompt_token_ids=prompt, n=n
        )

    def _post(self, order: list[str], body: dict[str, Any]) -> Any:
        """POST to the first server of ``order`` that takes the request; unreachable ones are
        skipped, and the round is tried again, backing off, until ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        waits = self.retry.wait() if self.retry.retry else None
        rounds, last = 0, None
        while True:
            for url in order:
                left = deadline - time.monotonic()
                try:
                    return call(
                        "POST",
                        f"{url}/v1/completions",
                        token=self.token,
                        timeout_s=max(left, 0.1),
                        json=body,
                        policy=NO_RETRY,
                    )
                except HttpCallError as exc:
                    if not exc.transient or time.monotonic() >= deadline:
                        raise RolloutError(f"rollout failed: {exc}") from None
                    last = exc
            if waits is None:  # no retries: one round over the servers
                raise RolloutError(f"rollout failed: {last}") from None
            rounds += 1
            pause = min(float(waits(_Attempt(rounds))), deadline - time.monotonic())
            if pause <= 0:
                raise RolloutError(f"rollout failed: {last}") from None
            time.sleep(pause)  # every server refused: back off (tenacity's schedule)


class _Attempt:
    """What tenacity's wait strategies read: the attempt number."""

    def __init__(self, number: int) -> None:
        self.attempt_number = number


__all__ = [
    "Completion",
    "ResponseShapeError",
    "RolloutClient",
    "RolloutError",
    "build_completion_request",
    "parse_completion_response",
]
