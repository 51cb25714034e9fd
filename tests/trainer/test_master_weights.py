"""Mixed precision with float32 master weights: with ``model.dtype: bfloat16`` the trainer's
parameters (what AdamW steps) stay float32 and only the compute runs in bf16 (autocast on one
process and DDP, FSDP2's MixedPrecisionPolicy when sharded), so a small learning rate still
moves the weights; the weights are pushed to the servers in the dtype they serve."""

from __future__ import annotations

from pathlib import Path

import torch
from test_chunked_logprobs import COMPLETIONS, PROMPTS, qwen, weighted_sum
from torch import nn

from agpo_api.models import AGPOJobSpec
from agpo_api.resolved import ResolvedSpec, resolve
from agpo_trainer.algorithms import linear_token_logprobs
from agpo_trainer.models.response import ResponseModel
from agpo_trainer.policy import MASTER_DTYPE, Policy, Responses, compute_dtype_of, response_logprobs
from agpo_trainer.runtime import Runtime


def spec(dtype: str) -> ResolvedSpec:
    return resolve(
        AGPOJobSpec.model_validate(
            {
                "model": {"name": "builtin:tiny", "dtype": dtype},
                "dataset": {"source": {"builtin": {}}},
            }
        )
    )


def test_the_compute_dtype_is_the_model_dtype_and_parameters_stay_float32(tmp_path: Path) -> None:
    assert compute_dtype_of(spec("float32")) is None
    assert compute_dtype_of(spec("bfloat16")) is torch.bfloat16
    rt = Runtime(
        rank=0, world_size=1, local_rank=0, rollout_urls=["http://x"], rollout_token=None,
        checkpoint_dir=tmp_path / "ckpt", metrics_port=None, weight_sync_host=None,
        weight_sync_port=0, cache_dir=tmp_path / "cache", base_dir=None,
    )  # fmt: skip
    policy = Policy.load(spec("bfloat16"), rt)
    assert {p.dtype for p in policy.module.parameters()} == {MASTER_DTYPE}
    assert policy.model.autocast_dtype is torch.bfloat16


def test_mixed_dtypes_through_the_chunked_lm_head_match_the_bf16_computation() -> None:
    """bf16 hidden states and a float32 lm_head (autocast in forward, none in backward): the
    log-probs and gradients of the computation with the weight cast to bf16 once."""
    torch.manual_seed(0)
    hidden = torch.randn(7, 16, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)  # float32 master
    tokens = torch.randint(0, 50, (7,))
    logp, _ = linear_token_logprobs(hidden, weight, tokens, chunk=3)
    logp.sum().backward()
    h_ref = hidden.detach().clone().requires_grad_()
    w_ref = weight.detach().clone().requires_grad_()
    z = (h_ref @ w_ref.to(torch.bfloat16).t()).float()
    ref = torch.log_softmax(z, -1).gather(1, tokens[:, None]).squeeze(1)
    ref.sum().backward()
    torch.testing.assert_close(logp, ref)
    assert weight.grad is not None and weight.grad.dtype == torch.float32
    assert hidden.grad is not None and hidden.grad.dtype == torch.bfloat16
    torch.testing.assert_close(weight.grad, w_ref.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(hidden.grad, h_ref.grad, rtol=2e-2, atol=2e-2)


def adam_step(model: nn.Module, lm: nn.Module, lr: float) -> float:
    """The fraction of parameter values one AdamW step at ``lr`` changes."""
    x = Responses.build(PROMPTS, COMPLETIONS, 0, torch.device("cpu"))
    before = [p.detach().clone() for p in lm.parameters()]
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0)
    logp, _ = response_logprobs(model, x, 1.0, chunk_tokens=4)
    weighted_sum(logp, x).backward()
    opt.step()
    changed = sum(
        int((p.detach() != b).sum()) for p, b in zip(lm.parameters(), before, strict=True)
    )
    return changed / sum(b.numel() for b in before)


def test_a_small_learning_rate_moves_float32_masters_but_not_bf16_parameters() -> None:
    """Why the masters: at lr 1e-6 (the GPU sample's) a bf16 parameter rounds the update away
    (bf16's spacing near 0.02 is ~1e-4); under autocast over float32 parameters it lands."""
    lm = qwen()
    mixed = adam_step(ResponseModel(lm, autocast_dtype=torch.bfloat16), lm, 1e-6)
    lm16 = qwen(dtype=torch.bfloat16)
    pure = adam_step(ResponseModel(lm16), lm16, 1e-6)
    assert mixed > 0.9, mixed
    assert pure < 0.2, pure
    # and the autocast forward is the bf16 model's, within bf16 rounding
    x = Responses.build(PROMPTS, COMPLETIONS, 0, torch.device("cpu"))
    with torch.no_grad():
        a, _ = response_logprobs(ResponseModel(qwen(), autocast_dtype=torch.bfloat16), x, 1.0)
        b, _ = response_logprobs(ResponseModel(qwen()), x, 1.0)
    torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)


def test_master_weights_are_pushed_in_the_served_dtype() -> None:
    from agpo_rollout.wire import pack_weights
    from agpo_trainer.rollout.weight_sync.nccl import NcclTransport

    lm = qwen()
    packed = pack_weights(lm.named_parameters(), cast_dtype=torch.bfloat16)
    assert {b.dtype for b in packed.buckets} == {"bfloat16"}
    nccl = NcclTransport(
        None,  # type: ignore[arg-type]  # prepare() makes no call
        token=None, master_address="127.0.0.1", master_port=0, timeout_s=1.0,
        cast_dtype=torch.bfloat16,
    )  # fmt: skip
    source = nccl.prepare(lm).source
    assert {t.dtype for _, t in source} == {torch.bfloat16}
    assert {n for n, _ in source} >= {"lm_head.weight", "model.embed_tokens.weight"}
