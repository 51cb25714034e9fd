"""Rollout side against real vLLM servers (CPU): generation, weight sync, auth, failures.

The e2e tests share two session-scoped servers (see conftest.py). Reference values come
from transformers running the same weights the server is known to serve. The tests
without a server are in test_http, test_client, test_auth, test_server (no torch) and
test_weight_sync.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

torch = pytest.importorskip("torch", reason="needs torch")
transformers = pytest.importorskip("transformers", reason="needs transformers")

from agpo_trainer.rollout.client import (  # noqa: E402
    Completion,
    RolloutClient,
    RolloutError,
)
from agpo_trainer.rollout.server import VLLMServer, process_group_members  # noqa: E402
from agpo_trainer.rollout.weight_sync import (  # noqa: E402
    GlooTransport,
    Server,
    ServerCalls,
    WeightSyncError,
)

Cluster = Any  # the session fixture's type lives in conftest.py

PROMPTS = ["1+1=", "Hello", "\n", "The cat sat on"]
e2e = [pytest.mark.e2e, pytest.mark.slow]


def _prompt_ids(model_dir: Path) -> list[list[int]]:
    from agpo_trainer.models.tiny import encode

    return encode(transformers.AutoTokenizer.from_pretrained(model_dir), PROMPTS)


@torch.no_grad()
def reference_logprobs(
    model: torch.nn.Module, prompt: list[int], completion: list[int], temperature: float
) -> torch.Tensor:
    """log p(completion[i] | prefix) under `model` at `temperature` (teacher forcing)."""
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, torch.tensor(completion)[:, None])[:, 0]


@torch.no_grad()
def greedy_margin(model: torch.nn.Module, prompt: list[int], completion: list[int]) -> float:
    """Smallest (best logit - chosen logit) along `completion`: 0 iff every token is argmax."""
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    chosen = logits.gather(-1, torch.tensor(completion)[:, None])[:, 0]
    return float((logits.max(-1).values - chosen).max())


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    """A copy of `model` with every weight moved by N(0, scale^2): clearly new outputs."""
    import copy

    new = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return new.eval()


def max_logprob_error(
    model: torch.nn.Module, completions: list[Completion], temperature: float
) -> float:
    worst = 0.0
    for c in completions:
        ref = reference_logprobs(model, c.prompt_token_ids, c.token_ids, temperature)
        worst = max(worst, float((ref - torch.tensor(c.logprobs)).abs().max()))
    return worst


# --- e2e: real vLLM servers -----------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_groups_of_completions_match_transformers_logprobs(
    cluster: Cluster, measurements: list[str]
) -> None:
    server = cluster.replica_a()
    prompts = _prompt_ids(cluster.model_dir)
    client = RolloutClient([server.url], cluster.token, timeout_s=120)
    n, max_tokens, temperature = 4, 24, 0.8
    start = time.perf_counter()
    out = client.generate(prompts, n=n, max_tokens=max_tokens, temperature=temperature, seed=3)
    elapsed = time.perf_counter() - start

    assert [(c.prompt_index, c.sample_index) for c in out] == [
        (i, j) for i in range(len(prompts)) for j in range(n)
    ]
    eos = transformers.AutoTokenizer.from_pretrained(cluster.model_dir).eos_token_id
    for c in out:
        assert c.prompt_token_ids == prompts[c.prompt_index]
        assert 1 <= len(c.token_ids) == len(c.logprobs) <= max_tokens
        assert c.finish_reason in ("stop", "length")
        assert c.truncated == (len(c.token_ids) == max_tokens and c.token_ids[-1] != eos)
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == eos  # EOS is kept: the policy learns to stop
    # n samples of one prompt are distinct draws, not n copies
    assert len({tuple(c.token_ids) for c in out[:n]}) > 1
    # The same seed reproduces the same groups (per-prompt seeds, any replica).
    again = client.generate(prompts, n=n, max_tokens=max_tokens, temperature=temperature, seed=3)
    assert [c.token_ids for c in again] == [c.token_ids for c in out]

    # Served log-probs are those of the sampled distribution (after temperature), on the
    # exact token ids: the importance-ratio baseline, with no re-tokenization drift.
    model = cluster.served[server.url]
    error = max_logprob_error(model, out, temperature)
    assert error < 2e-3, f"vLLM vs transformers log-prob error {error}"
    # ... and they are not raw (temperature-1) log-probs.
    assert max_logprob_error(model, out, 1.0) > 1e-2

    # Throughput of a warm server on a rollout-sized batch (32 prompts x 8 samples).
    start = time.perf_counter()
    batch = client.generate(prompts * 8, n=8, max_tokens=64, temperature=1.0, seed=0)
    warm = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for c in out)
    batch_tokens = sum(len(c.token_ids) for c in batch)
    measurements.append(
        f"generation: first call {tokens} tokens in {elapsed:.2f}s; warm batch of "
        f"{len(batch)} completions, {batch_tokens} tokens in {warm:.2f}s "
        f"({batch_tokens / warm:.0f} tok/s incl. HTTP); max |dlogp| vs transformers {error:.1e}"
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_weight_sync_serves_the_pushed_version(cluster: Cluster, measurements: list[str]) -> None:
    server = cluster.replica_a()
    prompts = _prompt_ids(cluster.model_dir)
    client = RolloutClient([server.url], cluster.token, timeout_s=120)
    base = cluster.served[server.url]

    def greedy() -> list[Completion]:
        return client.generate(prompts, n=1, max_tokens=16, temperature=0.0)

    before = greedy()
    v1_model = perturbed(base, seed=1)
    # The perturbation is large enough to tell the two weight sets apart.
    assert max_logprob_error(v1_model, client.generate(prompts, n=2, max_tokens=8), 1.0) > 0.1

    seconds_1 = cluster.push([server.url], v1_model, version=1)
    assert cluster.syncer.weight_versions() == {server.url: "1"}
    info = requests.get(
        f"{server.url}/weight_info", headers={"Authorization": f"Bearer {cluster.token}"}
    )
    assert info.json() == {"weight_version": "1"}

    after = greedy()
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    for c in after:  # every greedy token is the new model's argmax
        assert greedy_margin(v1_model, c.prompt_token_ids, c.token_ids) < 1e-3
    sampled = client.generate(prompts, n=4, max_tokens=16, temperature=1.0, seed=5)
    error = max_logprob_error(v1_model, sampled, 1.0)
    assert error < 2e-3, f"log-probs after sync do not match the pushed weights: {error}"

    v2_model = perturbed(v1_model, seed=2)
    seconds_2 = cluster.push([server.url], v2_model, version=2)
    assert cluster.syncer.weight_versions() == {server.url: "2"}
    sampled = client.generate(prompts, n=4, max_tokens=16, temperature=1.0, seed=5)
    assert max_logprob_error(v2_model, sampled, 1.0) < 2e-3
    assert seconds_1 < 10 and seconds_2 < 10
    stats = cluster.syncer.last
    measurements.append(
        f"weight sync (gloo, 1 server, {stats.bytes / 1e6:.2f} MB): v1 {seconds_1:.3f}s, "
        f"v2 {seconds_2:.3f}s (pause {stats.pause_s:.3f}, pack {stats.pack_s:.3f}, "
        f"transfer {stats.transfer_s:.3f}, resume+verify {stats.resume_verify_s:.3f})"
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_two_replicas_share_prompts_and_weight_pushes(
    cluster: Cluster, measurements: list[str]
) -> None:
    a, b = cluster.replica_a(), cluster.replica_b()
    urls = [a.url, b.url]
    new = perturbed(cluster.reference(), seed=10)
    cluster.push(urls, perturbed(new, seed=11), version=9)
    # A full state dict (what an FSDP trainer gathers) works like a module.
    seconds = cluster.syncer_for(urls).push(new.state_dict(), version=10)
    cluster.served.update({u: new for u in urls})
    assert cluster.syncer.weight_versions() == {a.url: "10", b.url: "10"}

    prompts = _prompt_ids(cluster.model_dir) * 2
    before = {u: _completions_served(u, cluster.token) for u in urls}
    client = RolloutClient(urls, cluster.token, timeout_s=120)
    out = client.generate(prompts, n=2, max_tokens=8, temperature=1.0, seed=0)
    assert len(out) == 2 * len(prompts)
    assert max_logprob_error(new, out, 1.0) < 2e-3
    for u in urls:  # both replicas took a share of the prompts
        assert _completions_served(u, cluster.token) > before[u]
    stats = cluster.syncer.last
    measurements.append(f"weight sync (gloo, 2 servers): {seconds:.3f}s ({stats})")


def _completions_served(url: str, token: str) -> float:
    text = requests.get(
        f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.e2e
@pytest.mark.slow
def test_the_gloo_transport_alone_drives_the_plugin_engine_in_the_server(cluster: Cluster) -> None:
    """The trainer-side transport, without the orchestrator, against the plugin's worker
    engine (loaded in the server's worker process via the entry point): the push is served."""
    server = cluster.replica_a()
    # The plugin was loaded inside the server's worker process, via the entry point.
    assert "Creating weight transfer engine: GlooWeightTransferEngine" in (
        server.log_path.read_text()
    )
    cluster.drop_syncer()  # this test re-initialises replica a's group itself
    model = perturbed(cluster.reference(), seed=20)
    calls = ServerCalls(cluster.token, 60.0, prefix="weight sync (gloo)")
    transport = GlooTransport(calls, master_address="127.0.0.1", master_port=0, timeout_s=60)
    target = Server(server.url, index=0, workers=1)
    transport.listen()
    transport.init(target, "transport-test")
    good = {"Authorization": f"Bearer {cluster.token}"}
    try:
        answer = transport.push(target, transport.prepare(model), "20", "wait")
    finally:
        transport.close()
    assert answer.version == "20"
    assert set(answer.phases) == {"pause", "start", "update", "finish", "resume"}
    cluster.served[server.url] = model
    info = requests.get(f"{server.url}/weight_info", headers=good, timeout=10).json()
    assert info == {"weight_version": "20"}
    client = RolloutClient([server.url], cluster.token, timeout_s=60)
    out = client.generate(_prompt_ids(cluster.model_dir), n=2, max_tokens=8, seed=1)
    assert max_logprob_error(model, out, 1.0) < 2e-3


@pytest.mark.e2e
@pytest.mark.slow
def test_every_path_but_health_needs_the_token(cluster: Cluster) -> None:
    url = cluster.replica_a().url
    good = {"Authorization": f"Bearer {cluster.token}"}
    version = requests.get(f"{url}/weight_info", headers=good, timeout=10).json()
    bad = {"Authorization": "Bearer wrong-token"}
    for method, path, body in [
        ("POST", "/update_weights", {"update_info": {"buckets": []}}),
        ("POST", "/agpo/push_weights", {"update_info": {"buckets": []}, "weight_version": "x"}),
        ("POST", "/collective_rpc", {"method": "reload_weights"}),
        ("POST", "/v1/completions", {"prompt": [1, 2], "max_tokens": 2}),
        ("POST", "/pause", None),
        ("POST", "/init_weight_transfer_engine", {"init_info": {}}),
        ("GET", "/weight_info", None),
        ("GET", "/metrics", None),
        ("GET", "/v1/models", None),
    ]:
        for headers in ({}, bad):
            r = requests.request(method, url + path, json=body, headers=headers, timeout=10)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.json()["error"] == "Unauthorized"
    assert requests.get(f"{url}/health", timeout=10).status_code == 200
    r = requests.post(
        f"{url}/v1/completions",
        json={"prompt": [1, 2], "max_tokens": 2},
        headers=good,
        timeout=30,
    )
    assert r.status_code == 200 and len(r.json()["choices"]) == 1
    paused = requests.get(f"{url}/is_paused", headers=good, timeout=10).json()
    assert paused == {"is_paused": False}  # the unauthenticated /pause did nothing
    assert requests.get(f"{url}/weight_info", headers=good, timeout=10).json() == version


@pytest.mark.e2e
@pytest.mark.slow
def test_server_killed_mid_rollout_gives_clear_errors_and_no_orphans(cluster: Cluster) -> None:
    victim: VLLMServer = cluster.replica_b()
    survivor = cluster.replica_a()
    syncer = cluster.syncer_for([survivor.url, victim.url])  # joined while both are up
    pgid = victim.process.pid  # type: ignore[union-attr]
    client = RolloutClient([victim.url], cluster.token, timeout_s=4.0)
    errors: list[BaseException] = []

    def rollout() -> None:
        try:  # ~80k tokens: runs for many seconds on these two cores
            client.generate([[1, 2, 3]] * 64, n=8, max_tokens=160, temperature=1.0)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    worker = threading.Thread(target=rollout)
    worker.start()
    time.sleep(1.5)
    assert worker.is_alive(), "rollout finished before the kill; make it longer"
    assert len(process_group_members(pgid)) >= 3  # API server, engine core, worker
    killed_at = time.monotonic()
    victim.kill()
    worker.join(timeout=30)
    assert not worker.is_alive(), "client hung after the server died"
    assert time.monotonic() - killed_at < 10
    assert len(errors) == 1 and isinstance(errors[0], RolloutError), errors
    assert victim.url in str(errors[0]) and "\n" not in str(errors[0])
    assert process_group_members(pgid) == []  # API server, engine core, workers: all gone

    # The next weight push fails fast, naming the dead server; the live server got its
    # push (each server is one round trip of its own) and is serving, not left paused.
    try:
        start = time.monotonic()
        with pytest.raises(WeightSyncError, match=victim.url):
            syncer.push(cluster.reference(), version=99)
        assert time.monotonic() - start < 10
        good = {"Authorization": f"Bearer {cluster.token}"}
        paused = requests.get(f"{survivor.url}/is_paused", headers=good, timeout=10).json()
        assert paused == {"is_paused": False}
    finally:
        cluster.drop_syncer()
