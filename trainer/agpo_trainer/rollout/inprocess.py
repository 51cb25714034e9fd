"""A rollout backend in this process: a served copy of the policy, sampled with KV caching.

:class:`InProcessBackend` is what the study, the learnability gate and tests pass to
:func:`agpo_trainer.train.train` instead of the vLLM servers: it keeps its own copy of the
policy module, which a push overwrites (so, like a server, it generates with the weights it
was last pushed, under that version, and an overlapped step can generate while the policy
trains), and samples it with :func:`sample_padded`. Its completions are the rollout client's
:class:`Completion` objects, so ``Experience`` and ``Evaluator`` run on it unchanged.

:func:`sample_rows` and :func:`sample_padded` are the two samplers (one token loop,
:func:`_decode`); both draw from a seeded generator, so the samples are fixed by the inputs
and the seed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from agpo_api.resolved import ResolvedSpec
from agpo_trainer.rollout.client import Completion

if TYPE_CHECKING:
    from agpo_trainer.policy import Policy
    from agpo_trainer.runtime import Runtime

#: Token ids, per-token log-probs (after temperature) and whether EOS was reached.
Row = tuple[list[int], list[float], bool]


#: One decoding step: (the sampled tokens [B], the KV cache) -> the model's output.
Step = Callable[[torch.Tensor, Any], Any]


def _decode(
    res: Any,
    step: Step,
    *,
    eos: int,
    max_new_tokens: int,
    temperature: float,
    gen: torch.Generator,
) -> list[Row]:
    """The token loop shared by both samplers: from the prefill's output ``res``, sample (or
    take the argmax when ``temperature == 0``) up to ``max_new_tokens`` tokens per row, EOS
    repeated once a row has finished, and cut each row after its EOS."""
    past, logits = res.past_key_values, res.logits[:, -1]
    greedy = temperature == 0
    done = torch.zeros(logits.shape[0], dtype=torch.bool)
    toks: list[torch.Tensor] = []
    lps: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        logits = logits.float() / (1.0 if greedy else temperature)
        if greedy:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        lps.append(torch.log_softmax(logits, -1).gather(1, nxt[:, None]).squeeze(1))
        toks.append(nxt)
        done |= nxt == eos
        if bool(done.all()):
            break
        res = step(nxt, past)
        past, logits = res.past_key_values, res.logits[:, -1]
    out: list[Row] = []
    for s, l_ in zip(torch.stack(toks, 1).tolist(), torch.stack(lps, 1).tolist(), strict=True):
        finished = eos in s
        k = s.index(eos) + 1 if finished else len(s)
        out.append((s[:k], l_[:k], finished))
    return out


@torch.no_grad()
def sample_rows(
    model: Any,
    prompts: list[list[int]],
    n: int,
    *,
    eos: int,
    max_new_tokens: int,
    temperature: float,
    gen: torch.Generator,
) -> list[Row]:
    """``n`` completions per prompt (prompt ``i``'s are rows ``i*n .. i*n+n-1``).

    Batched by prompt length (equal lengths: no padding, so no attention mask is needed),
    KV-cached, multinomial at ``temperature`` from ``gen`` (``temperature == 0``: greedy).
    Buckets are visited in order of first appearance and rows prompt-major within a bucket,
    so the random stream, and hence every sample, is fixed by the inputs and the seed.
    """
    model.eval()
    out: list[Row | None] = [None] * (len(prompts) * n)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)

    def step(nxt: torch.Tensor, past: Any) -> Any:
        return model(input_ids=nxt[:, None], past_key_values=past, use_cache=True)

    for idxs in by_len.values():
        rows = [(i, j) for i in idxs for j in range(n)]
        ids = torch.tensor([prompts[i] for i, _ in rows])
        decoded = _decode(
            model(input_ids=ids, use_cache=True),
            step,
            eos=eos,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            gen=gen,
        )
        for (i, j), row in zip(rows, decoded, strict=True):
            out[i * n + j] = row
    return [r for r in out if r is not None]


@torch.no_grad()
def sample_padded(
    model: Any,
    prompts: list[list[int]],
    n: int,
    *,
    eos: int,
    pad: int,
    max_new_tokens: int,
    temperature: float,
    gen: torch.Generator,
) -> list[Row]:
    """As :func:`sample_rows`, but every prompt in one left-padded batch (attention mask and
    position ids), so a step costs one forward per new token instead of one per prompt
    length and token: ~5x faster for a batch of mixed lengths on this tiny model. Samples
    differ from :func:`sample_rows`' (another order of the random stream), not in law."""
    model.eval()
    rows = [p for p in prompts for _ in range(n)]
    width = max(len(p) for p in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for r, p in enumerate(rows):
        ids[r, width - len(p) :] = torch.tensor(p)
        attn[r, width - len(p) :] = 1
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    state = {"attn": attn, "last": pos[:, -1]}

    def step(nxt: torch.Tensor, past: Any) -> Any:
        # one more attended position per row; its position id follows the row's own last
        state["attn"] = torch.cat([state["attn"], torch.ones((len(rows), 1), dtype=torch.long)], 1)
        state["last"] = state["last"] + 1
        return model(
            input_ids=nxt[:, None],
            attention_mask=state["attn"],
            position_ids=state["last"][:, None],
            past_key_values=past,
            use_cache=True,
        )

    return _decode(
        model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True),
        step,
        eos=eos,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        gen=gen,
    )


class InProcessBackend:
    """The rollout servers' part of the loop, in process (see the module docstring).

    ``generated`` counts every completion asked for (resample rounds and evaluations
    included); ``version`` is the version of the weights it serves (None before a push).
    """

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.version: int | None = None
        self.generated = 0

    @staticmethod
    def of(spec: ResolvedSpec, rt: Runtime, policy: Policy) -> InProcessBackend:
        """A :data:`agpo_trainer.rollout.backend.BackendFactory`: a copy of the policy's
        module (its weights arrive with the first push)."""
        return InProcessBackend(copy.deepcopy(policy.module), policy.tokenizer)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        n: int,
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[Completion]:
        if top_p != 1.0:
            raise ValueError("InProcessBackend samples the full distribution: top_p must be 1.0")
        rows_in = [list(p) for p in prompts]
        gen = torch.Generator()
        gen.manual_seed(0 if seed is None else seed)
        rows = sample_padded(
            self.model,
            rows_in,
            n,
            eos=self.tokenizer.eos_token_id,
            pad=self.tokenizer.pad_token_id,
            max_new_tokens=max_tokens,
            temperature=temperature,
            gen=gen,
        )
        self.generated += len(rows)
        if stop:
            rows = [self._stopped(ids, lps, finished, stop) for ids, lps, finished in rows]
        return [
            Completion(
                prompt_index=k // n,
                sample_index=k % n,
                prompt_token_ids=list(rows_in[k // n]),
                token_ids=ids,
                logprobs=lps,
                finish_reason="stop" if finished else "length",
                text=self.tokenizer.decode(ids, skip_special_tokens=True),
            )
            for k, (ids, lps, finished) in enumerate(rows)
        ]

    def _stopped(
        self, ids: list[int], lps: list[float], finished: bool, stop: Sequence[str]
    ) -> Row:
        """The row as a server with stop strings returns it: cut after the token that completes
        the first stop string (which stays in the tokens), and then finished. The tokens
        sampled after it never affect the ones before, so cutting afterwards is stopping."""
        for k in range(1, len(ids) + 1):
            text = self.tokenizer.decode(ids[:k], skip_special_tokens=True)
            if any(s in text for s in stop):
                return ids[:k], lps[:k], True
        return ids, lps, finished

    def push(self, weights: nn.Module | dict[str, Tensor], version: int) -> float:
        start = time.perf_counter()
        state = weights.state_dict() if isinstance(weights, nn.Module) else weights
        with torch.no_grad():
            self.model.load_state_dict(state)
        self.version = version
        return time.perf_counter() - start

    def resync(self, weights: nn.Module | dict[str, Tensor], version: int) -> float:
        return self.push(weights, version)

    def lagging(self, version: int) -> dict[str, str]:
        return {} if self.version == version else {"in-process": str(self.version)}

    def refresh(self, weights: nn.Module | dict[str, Tensor], version: int) -> float:
        return self.push(weights, version) if self.lagging(version) else 0.0

    def health(self) -> None:
        return None  # one copy, in this process: no pool to report


def keeping(servers: list[InProcessBackend]) -> Callable[..., InProcessBackend]:
    """A backend factory (:meth:`InProcessBackend.of`) that also appends the backend it builds
    to ``servers``: after ``train`` returns, ``servers[0].model`` holds the weights last pushed
    (the trained policy), which a study or a test evaluates."""

    def factory(spec: ResolvedSpec, rt: Runtime, policy: Policy) -> InProcessBackend:
        servers.append(InProcessBackend.of(spec, rt, policy))
        return servers[-1]

    return factory
