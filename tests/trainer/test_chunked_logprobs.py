"""Chunked log-probs (trainer.logprobChunkTokens): the lm_head applied to response positions
only, a chunk at a time, gives the log-probs, entropies and gradients of the unchunked
computation (the full-vocabulary logits of every position), and keeps no [N, V] tensor for
backward."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from agpo_trainer.algorithms import entropy_from_logits, linear_token_logprobs, token_logprobs
from agpo_trainer.models.response import ResponseModel
from agpo_trainer.policy import Responses, response_logprobs

VOCAB = 96
# Uneven prompts and completions: right padding inside the batch, one completion of 1 token.
PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11]]
COMPLETIONS = [[20, 21, 22, 23], [30], [40, 41, 42], [50, 51, 52, 53, 54, 55]]
N_TOKENS = sum(len(c) for c in COMPLETIONS)


def qwen(tie: bool = False, vocab: int = VOCAB, dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        tie_word_embeddings=tie,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).to(dtype)


def batch() -> Responses:
    return Responses.build(PROMPTS, COMPLETIONS, 0, torch.device("cpu"))


def unchunked(lm: nn.Module, x: Responses, temperature: float) -> tuple[Tensor, Tensor]:
    """The computation the chunked path replaces: every position's logits, gathered at the
    response positions, in float32, tempered."""
    logits = lm(input_ids=x.input_ids, attention_mask=x.attention_mask).logits
    logits = torch.gather(logits, 1, x.positions.unsqueeze(-1).expand(-1, -1, logits.size(-1)))
    logits = logits.float() / temperature
    return token_logprobs(logits, x.tokens), entropy_from_logits(logits.detach())


def weighted_sum(logp: Tensor, x: Responses) -> Tensor:
    """A loss that weighs every response token differently (so wrong gradients show)."""
    w = torch.linspace(-1.0, 2.0, logp.numel()).view_as(logp)
    return (logp * w * x.mask).sum()


def grads(lm: nn.Module) -> dict[str, Tensor]:
    return {k: p.grad.clone() for k, p in lm.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 3, N_TOKENS, N_TOKENS + 5, 1024])
@pytest.mark.parametrize("tie", [False, True])
def test_logprobs_entropy_and_gradients_match_unchunked(chunk: int, tie: bool) -> None:
    lm, x, temperature = qwen(tie), batch(), 0.7
    want_logp, want_entropy = unchunked(lm, x, temperature)
    weighted_sum(want_logp, x).backward()
    want_grads = grads(lm)
    lm.zero_grad(set_to_none=True)

    logp, entropy = response_logprobs(
        ResponseModel(lm), x, temperature, chunk_tokens=chunk, with_entropy=True
    )
    assert entropy is not None and logp.dtype == torch.float32
    mask = x.mask
    torch.testing.assert_close(logp[mask], want_logp[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy[mask], want_entropy[mask], rtol=1e-5, atol=1e-5)
    assert bool((logp[~mask] == 0).all() and (entropy[~mask] == 0).all())  # padding: 0
    weighted_sum(logp, x).backward()
    got = grads(lm)
    assert got.keys() == want_grads.keys() and ("lm_head.weight" in got) != tie  # tied: one
    for name, g in want_grads.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("chunk", [1, 2, 7, 50])
def test_linear_token_logprobs_gradcheck_float64(chunk: int) -> None:
    g = torch.Generator().manual_seed(3)
    n, h, v = 7, 5, 11
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(v, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, v, (n,), generator=g)

    def logp(hd: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return linear_token_logprobs(hd, w, tokens, bias=b, temperature=0.6, chunk=chunk)[0]

    assert torch.autograd.gradcheck(logp, (hidden, weight, bias))
    out, entropy = linear_token_logprobs(
        hidden, weight, tokens, bias=bias, temperature=0.6, chunk=chunk, with_entropy=True
    )
    z = (hidden @ weight.T + bias) / 0.6
    torch.testing.assert_close(out, token_logprobs(z[None], tokens[None])[0])
    assert entropy is not None and not entropy.requires_grad
    torch.testing.assert_close(entropy, entropy_from_logits(z))


def test_bfloat16_model_matches_unchunked_within_bf16_rounding() -> None:
    lm, x = qwen(dtype=torch.bfloat16), batch()
    want, _ = unchunked(lm, x, 1.0)
    got, _ = response_logprobs(ResponseModel(lm), x, 1.0, chunk_tokens=4)
    assert got.dtype == torch.float32  # ratios need the precision bf16 lacks
    torch.testing.assert_close(got[x.mask], want[x.mask], rtol=0, atol=2e-2)


def largest_saved(fn: object) -> int:
    """The largest number of elements of any tensor autograd saves for backward in ``fn()``."""
    sizes: list[int] = []

    def pack(t: Tensor) -> Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()  # type: ignore[operator]
    return max(sizes)


def test_backward_keeps_no_full_vocabulary_logits() -> None:
    """What bounds memory: the unchunked graph saves [N, V] logits for backward, the chunked
    one saves nothing that grows with positions x vocabulary (the biggest tensor it saves is
    the lm_head, V x H, which every path holds)."""
    vocab, n = 4096, 4 * 20  # more response tokens than the hidden size (32)
    lm = qwen(vocab=vocab)
    x = Responses.build([[1, 2]] * 4, [list(range(3, 23))] * 4, 0, torch.device("cpu"))
    n_by_v = n * vocab
    assert largest_saved(lambda: unchunked(lm, x, 1.0)) >= n_by_v  # the test can fail
    chunked = largest_saved(lambda: response_logprobs(ResponseModel(lm), x, 1.0, chunk_tokens=2))
    assert chunked <= vocab * 32 < n_by_v  # the lm_head weight: [V, hidden 32]


def test_wrapper_is_the_causal_lm_for_state_and_plain_calls() -> None:
    """The wrapper the policy trains has the causal LM's parameter names (checkpoints, weight
    sync, FSDP state dicts unchanged) and, called without responses, its forward (warm-up)."""
    lm = qwen(tie=True)
    model = ResponseModel(lm)
    assert list(model.state_dict()) == list(lm.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in lm.named_parameters()]
    x = batch()
    torch.testing.assert_close(
        model(input_ids=x.input_ids, attention_mask=x.attention_mask).logits,
        lm(input_ids=x.input_ids, attention_mask=x.attention_mask).logits,
    )
    model.eval()
    assert not lm.training and not lm.model.training
    model.train()
    assert lm.training and lm.model.training


def test_models_that_transform_logits_take_their_own_forward() -> None:
    """A config with a logit transform (Gemma's soft-capping, ...) routes to the full-logits
    path; Qwen2 ignores the field, so both paths must agree here."""
    lm, x = qwen(), batch()
    lm.config.final_logit_softcapping = 30.0
    model = ResponseModel(lm)
    assert model.head is None
    want, want_entropy = unchunked(lm, x, 0.7)
    logp, entropy = response_logprobs(model, x, 0.7, with_entropy=True)
    assert entropy is not None
    torch.testing.assert_close(logp[x.mask], want[x.mask])
    torch.testing.assert_close(entropy[x.mask], want_entropy[x.mask])
