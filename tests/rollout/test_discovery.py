"""Where the trainer finds its rollout servers (AGPO_ROLLOUT_DISCOVERY), and the rollout
client's hand-over of a request to the next server. No torch at import time."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from agpo_api.env import EnvVar
from agpo_trainer.rollout.client import RolloutClient, RolloutError
from agpo_trainer.rollout.discovery import (
    DiscoveryError,
    DnsDiscovery,
    FileDiscovery,
    StaticDiscovery,
    discovery_from,
)
from agpo_trainer.rollout.server import free_port


def test_unset_is_the_fixed_list() -> None:
    found = discovery_from(None, ["http://a:1/", "http://b:2"])
    assert isinstance(found, StaticDiscovery) and found.urls() == ["http://a:1", "http://b:2"]


def test_a_file_is_read_again_on_every_call(tmp_path: Path) -> None:
    path = tmp_path / "servers"
    found = discovery_from(f"file://{path}")
    assert isinstance(found, FileDiscovery) and found.urls() == []  # not written yet
    path.write_text(
        "http://127.0.0.1:8001\n\n# a comment\nhttp://127.0.0.1:8002/  # second\nnot-a-url\n"
    )
    assert found.urls() == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    path.write_text("http://127.0.0.1:8002\nhttp://127.0.0.1:8002\n")
    assert found.urls() == ["http://127.0.0.1:8002"]  # duplicates once


def test_dns_lists_every_address_of_the_name() -> None:
    found = discovery_from("dns://localhost:8000")
    assert found == DnsDiscovery("localhost", 8000)
    addresses = {info[4][0] for info in socket.getaddrinfo("localhost", 8000)}
    expected = sorted(f"http://[{a}]:8000" if ":" in a else f"http://{a}:8000" for a in addresses)
    assert sorted(found.urls()) == expected and "http://127.0.0.1:8000" in expected
    # a name that does not resolve (no ready pod yet) lists nothing, without raising
    assert DnsDiscovery("no-such-service.invalid", 8000).urls() == []


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("dns://rollout", "dns://HOST:PORT"),
        ("dns://rollout:80/path", "dns://HOST:PORT"),
        ("dns://rollout:abc", "dns://HOST:PORT"),
        ("dns://rollout:99999", "PORT 1-65535"),
        ("dns://rollout:0", "PORT 1-65535"),
        ("dns://[::1:80", "dns://HOST:PORT"),
        ("dns://user@rollout:80", "dns://HOST:PORT"),
        ("file://relative/servers", "file:///ABSOLUTE/PATH"),
        ("consul://x", "use one of dns://..., file://..."),
        ("rollout:8000", "use one of"),
    ],
)
def test_a_malformed_source_says_how_to_write_it(uri: str, says: str) -> None:
    with pytest.raises(DiscoveryError) as info:
        discovery_from(uri)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_the_trainer_refuses_a_malformed_source_naming_the_variable() -> None:
    from agpo_api import load_job
    from agpo_trainer.runtime import ConfigError, Runtime

    job = load_job(Path(__file__).parents[2] / "manifests" / "samples" / "tiny-cpu.yaml")
    rt = Runtime.from_env(job, {EnvVar.ROLLOUT_DISCOVERY.value: "dns://svc.ns.svc:8000"})
    assert rt.rollout_discovery == "dns://svc.ns.svc:8000" and rt.rollout_urls == []
    with pytest.raises(ConfigError, match=r"AGPO_ROLLOUT_DISCOVERY='dns://svc'"):
        Runtime.from_env(job, {EnvVar.ROLLOUT_DISCOVERY.value: "dns://svc"})
    with pytest.raises(ConfigError, match=r"AGPO_ROLLOUT_URLS is empty.*AGPO_ROLLOUT_DISCOVERY"):
        Runtime.from_env(job, {})


def test_a_request_goes_to_the_next_server_and_fails_naming_the_last_one() -> None:
    down = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]  # nothing listens there
    client = RolloutClient(down, timeout_s=1.5)
    start = time.monotonic()
    with pytest.raises(RolloutError) as info:
        client.generate([[1, 2, 3]], n=2, max_tokens=4)
    assert 1.0 < time.monotonic() - start < 5.0  # both tried, backing off, within the deadline
    assert "Connection refused" in str(info.value) and "\n" not in str(info.value)
    client.set_urls([])
    with pytest.raises(RolloutError, match="no rollout server serves the current weights"):
        client.generate([[1]], n=1, max_tokens=1)
