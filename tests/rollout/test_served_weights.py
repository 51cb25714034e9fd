"""Served weights are verified before every rollout: a vLLM server replaced mid-run (killed
and started again on its port, as a recreated rollout pod) is noticed by one GET and gets
the trainer's weights again, instead of serving its initial weights for a step."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def server(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Any]:
    pytest.importorskip("vllm")
    from agpo_trainer.rollout.server import VLLMServer

    made: list[VLLMServer] = []

    def start(port: int | None = None) -> VLLMServer:
        s = VLLMServer(
            tiny_model_dir, port=port, token=TOKEN, log_path=tmp_path / f"vllm-{len(made)}.log",
            max_model_len=128,
        )  # fmt: skip
        made.append(s.start())
        return s

    first = start()
    first.wait_ready(300)
    first.restart = lambda: start(first.port)  # type: ignore[attr-defined]
    try:
        yield first
    finally:
        for s in made:
            s.stop()


TOKEN = secrets.token_urlsafe(16)


def test_a_replaced_server_is_noticed_and_served_the_weights_again(
    server: Any, tiny_model_dir: Path
) -> None:
    import torch
    from conftest import load_reference

    from agpo_trainer.metrics import TrainerMetrics
    from agpo_trainer.rollout.client import RolloutClient
    from agpo_trainer.rollout.discovery import StaticDiscovery
    from agpo_trainer.rollout.pool import ElasticPool
    from agpo_trainer.rollout.weight_sync import WeightSyncer
    from agpo_trainer.train import ensure_served, push_weights

    model = load_reference(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)  # not the initial weights
    weights = dict(model.state_dict())
    syncer = WeightSyncer(
        [server.url], TOKEN, master_address="127.0.0.1", master_port=0, timeout_s=60,
        ready_timeout_s=300,
    )  # fmt: skip
    servers = ElasticPool(
        StaticDiscovery((server.url,)), RolloutClient([], TOKEN, timeout_s=60), syncer,
        ready_timeout_s=300, push_timeout_s=60,
    )  # fmt: skip
    servers.start()
    try:
        push_weights(servers, None, weights, 3, TrainerMetrics())  # type: ignore[arg-type]
        assert syncer.lagging(3) == {}

        # The server is replaced: a new process on the same port, with its initial weights.
        server.kill()
        replaced = server.restart()
        # lagging() waits for the new server to answer (one GET), then reports it.
        assert syncer.lagging(3) == {server.url: "default"}  # vLLM's initial version
        ensure_served(servers, None, weights, 3)  # type: ignore[arg-type]
        assert syncer.lagging(3) == {}
        client = RolloutClient([replaced.url], TOKEN, timeout_s=60)
        assert len(client.generate([[1, 2, 3]], n=2, max_tokens=4)) == 2

        # Replaced again, this time noticed only by the next push: it joins again and pushes.
        replaced.kill()
        server.restart()
        push_weights(servers, None, weights, 4, TrainerMetrics())  # type: ignore[arg-type]
        assert syncer.lagging(4) == {}
    finally:
        syncer.close()


def _checksums(url: str) -> dict[str, str]:
    """vLLM's digest of every tensor the server holds (fused q/k/v etc. included)."""
    import requests

    r = requests.post(
        f"{url}/weight_checker",
        json={"action": "checksum"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    r.raise_for_status()
    return dict(r.json()["checksums"])


def test_served_weights_are_exactly_the_trainers_after_several_pushes(
    server: Any, tiny_model_dir: Path
) -> None:
    """Bit-exact, not within a tolerance: after pushes of other weights, pushing the
    checkpoint's own weights gives back the digests of the server that loaded it from
    disk, and pushing a set again gives back that set's digests."""
    import torch
    from conftest import load_reference

    from agpo_trainer.rollout.weight_sync import WeightSyncer

    initial = _checksums(server.url)  # loaded from the checkpoint on disk
    reference = load_reference(tiny_model_dir)
    original = {k: v.clone() for k, v in reference.state_dict().items()}

    def moved(seed: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return {k: v + 1e-3 * torch.randn(v.shape, generator=gen) for k, v in original.items()}

    syncer = WeightSyncer(
        [server.url], TOKEN, master_address="127.0.0.1", master_port=0, timeout_s=60,
        max_bucket_bytes=256 * 1024,  # several buckets for this 1.5 MB model
    )  # fmt: skip
    syncer.init()
    try:
        seen: list[dict[str, str]] = []
        for version in (1, 2, 3):
            syncer.push(moved(version), version)
            seen.append(_checksums(server.url))
        assert len({tuple(sorted(c.items())) for c in [initial, *seen]}) == 4  # all differ

        syncer.push(moved(1), 4)
        assert _checksums(server.url) == seen[0]
        syncer.push(original, 5)
        assert _checksums(server.url) == initial
        assert syncer.lagging(5) == {}
    finally:
        syncer.close()
