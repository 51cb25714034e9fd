"""The rollout client without a server: request bodies, and a server that is not there.

No torch at import time (see conftest.py).
"""

from __future__ import annotations

import time

import pytest

from agpo_trainer.rollout.client import RolloutClient, RolloutError, build_completion_request
from agpo_trainer.rollout.server import free_port


def test_completion_request_asks_for_token_ids_and_sampled_logprobs() -> None:
    body = build_completion_request(
        [1, 2, 3], n=4, max_tokens=8, temperature=0.7, top_p=0.9, seed=11
    )
    assert body["prompt"] == [1, 2, 3] and body["n"] == 4 and body["seed"] == 11
    assert body["logprobs"] == 0 and body["return_token_ids"] is True


def test_client_unreachable_server_fails_within_timeout() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = RolloutClient([url], timeout_s=2.0)
    start = time.monotonic()
    with pytest.raises(RolloutError) as info:
        client.generate([[1, 2, 3]], n=2, max_tokens=4)
    elapsed = time.monotonic() - start
    assert 1.0 < elapsed < 5.0  # retried with backoff, then gave up on time
    message = str(info.value)
    assert url in message and "\n" not in message and "Connection refused" in message
