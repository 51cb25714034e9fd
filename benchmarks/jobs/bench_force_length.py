"""A vLLM (v1) logits processor that makes every completion exactly ``max_tokens`` long.

vLLM's own ``min_tokens`` masks the stop tokens (EOS included) of a request until it has that
many output tokens; this subclass applies the same mask to every request with ``min_tokens =
max_tokens``, so generation always runs to the limit (finish reason "length"). It is how
``benchmarks/bench_vs_trl.py`` forces equal completion lengths on our side without a request
field for it (TRL's side gets ``min_new_tokens = max_new_tokens``, the same mask in
transformers). Loaded by the server with ``--logits-processors
bench_force_length:MinTokensIsMaxTokens`` (see tiny-trl-parity.yaml); this directory must be on
the server's PYTHONPATH.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm import SamplingParams
from vllm.v1.sample.logits_processor.builtin import MinTokensLogitsProcessor


class MinTokensIsMaxTokens(MinTokensLogitsProcessor):
    """``min_tokens = max_tokens`` for every request (stop tokens masked until the limit)."""

    @staticmethod
    def add_request(
        params: SamplingParams, _: list[int] | None, output_tok_ids: list[int]
    ) -> tuple[int, Sequence[int], set[int], bool] | None:
        wanted = params.max_tokens
        if not wanted or len(output_tok_ids) >= wanted:
            return None
        return (
            wanted,
            output_tok_ids,
            params.all_stop_token_ids,
            params.structured_outputs is not None,
        )
