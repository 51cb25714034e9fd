"""Weight sync without vLLM servers: the wire format, the plugin's registration, the
"HTTP while in the collective" step, and a whole push into a stand-in server that joins
the gloo group like the plugin's worker engine does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="needs torch")

from agpo_rollout import routes  # noqa: E402
from agpo_rollout.gloo import broadcast_buffer, join_gloo_group  # noqa: E402
from agpo_rollout.wire import (  # noqa: E402  # noqa: E402
    PUSH_PATH,
    PushRequestError,
    pack_weights,
    parse_buckets,
    parse_push_request,
    plan_buckets,
    unpack_bucket,
)
from agpo_trainer.rollout.server import free_port  # noqa: E402
from agpo_trainer.rollout.weight_sync import (  # noqa: E402
    WeightSyncer,
    WeightSyncError,
    during_http,
)


def test_pack_unpack_round_trip_across_dtypes_and_buckets() -> None:
    gen = torch.Generator().manual_seed(0)
    named = [
        ("module.a.weight", torch.randn(3, 4, generator=gen)),
        ("b.bias", torch.randn(5, generator=gen).to(torch.bfloat16)),
        ("_orig_mod.c.weight", torch.randn(2, 2, 2, generator=gen)),
        ("d", torch.randn(7, generator=gen).to(torch.bfloat16)),
    ]
    packed = pack_weights(named, max_bucket_bytes=40)
    # float32 first (first seen), each bucket <= 40 bytes unless one tensor is bigger
    assert [b.dtype for b in packed.buckets] == ["float32", "float32", "bfloat16"]
    got = {
        n: t.clone()
        for b, buf in zip(packed.buckets, packed.buffers, strict=True)
        for n, t in unpack_bucket(buf, b)
    }
    assert set(got) == {"a.weight", "b.bias", "c.weight", "d"}  # wrapper prefixes dropped
    for name, tensor in named:
        short = name.removeprefix("module.").removeprefix("_orig_mod.")
        assert got[short].dtype == tensor.dtype and torch.equal(got[short], tensor)
    assert plan_buckets([("x", torch.float32, [10])], 1)[0].names == ["x"]


def test_the_packer_reuses_its_buffers_and_always_sends_the_current_values() -> None:
    from agpo_rollout.wire import Packer

    packer = Packer(max_bucket_bytes=64)
    state = {"a": torch.arange(10.0), "b": torch.arange(12.0).reshape(3, 4)}
    first = packer.pack(state.items())
    pointers = [b.data_ptr() for b in first.buffers]
    state = {k: v * -2 for k, v in state.items()}
    second = packer.pack(state.items())
    assert [b.data_ptr() for b in second.buffers] == pointers  # no new allocation
    got = {n: t for b, buf in zip(second.buckets, second.buffers, strict=True)
           for n, t in unpack_bucket(buf, b)}  # fmt: skip
    assert all(torch.equal(got[k], v) for k, v in state.items())
    third = packer.pack([*state.items(), ("c", torch.ones(3))])  # a new plan: new buffers
    assert [b.names for b in third.buckets] == [["a"], ["b", "c"]]
    # In the background the buckets are filled in order on a thread; each one is waited for.
    later = packer.pack([("a", torch.full((10,), 7.0))], background=True)
    later.wait_ready(0, timeout_s=10)
    assert torch.equal(later.buffers[0].view(torch.float32), torch.full((10,), 7.0))


def test_plugin_entry_point_registers_gloo_on_the_engine_factory_idempotently() -> None:
    pytest.importorskip("vllm", reason="needs vllm")
    from importlib.metadata import entry_points

    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    import agpo_rollout as plugin
    from agpo_rollout.engine import GlooWeightTransferEngine

    values = [ep.value for ep in entry_points(group="vllm.general_plugins")]
    assert "agpo_rollout:register" in values  # pip install -e . done?
    plugin.register()
    plugin.register()
    plugin._registered = False  # as if a second copy of the plugin loaded
    plugin.register()
    assert WeightTransferEngineFactory._registry["gloo"]() is GlooWeightTransferEngine


def test_weight_syncer_init_fails_fast_on_dead_server() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    syncer = WeightSyncer([url], master_address="127.0.0.1", master_port=0, ready_timeout_s=2)
    start = time.monotonic()
    with pytest.raises(WeightSyncError, match=url):
        syncer.init()
    assert time.monotonic() - start < 5.0


def test_during_http_prefers_the_http_error_and_returns_the_collective_result() -> None:
    def fails(message: str) -> Any:
        raise RuntimeError(message)

    def late_failure() -> None:
        time.sleep(5)

    assert during_http(lambda: None, lambda: 7, timeout_s=5, failure=ValueError) == 7
    http_done = threading.Event()

    def collective_after_http() -> None:
        http_done.wait(5)
        time.sleep(0.05)  # let the future record its exception
        fails("collective broke")

    def http_fails() -> None:
        http_done.set()
        fails("server said why")

    with pytest.raises(RuntimeError, match="server said why"):
        during_http(http_fails, collective_after_http, timeout_s=5, failure=ValueError)
    with pytest.raises(ValueError, match="collective broke"):
        during_http(
            late_failure, lambda: fails("collective broke"), timeout_s=5, failure=ValueError
        )


# --- a stand-in server: vLLM's RL endpoints over the plugin's wire format ---------------


class FakeServer(ThreadingHTTPServer):
    def __init__(self, *, fail_update: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.fail_update = fail_update
        self.calls: list[str] = []
        self.group: Any = None
        self.timeout_s = 30.0
        self.version: str | None = None
        self.weights: dict[str, torch.Tensor] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeHandler(BaseHTTPRequestHandler):
    server: FakeServer

    def _answer(self, status: int = 200, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.calls.append(f"GET {self.path}")
        if self.path == "/get_world_size":
            self._answer(body={"world_size": 1})
        else:
            self._answer(body={"weight_version": self.server.version})

    def do_POST(self) -> None:
        s = self.server
        s.calls.append(f"POST {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        if self.path == "/init_weight_transfer_engine":
            info = body["init_info"]
            s.timeout_s = info["timeout_s"]
            s.group = join_gloo_group(
                info["master_address"],
                info["master_port"],
                info["group_name"],
                info["rank_offset"],
                info["world_size"],
                info["timeout_s"],
            )
        elif self.path == PUSH_PATH:  # the plugin's route: pause .. resume in one call
            info, version, _ = parse_push_request(body)
            if s.fail_update:
                return self._answer(500, {"error": "update failed: bad", "phase": "update"})
            for bucket in parse_buckets(info["buckets"]):
                buffer = torch.empty(bucket.nbytes, dtype=torch.uint8)
                broadcast_buffer(s.group, buffer, timeout_s=s.timeout_s)
                s.weights.update({n: t.clone() for n, t in unpack_bucket(buffer, bucket)})
            s.version = version
            return self._answer(body={"weight_version": version, "phases": {"update": 0.0}})
        self._answer()

    def log_message(self, *args: object) -> None:
        pass


def _serve(server: FakeServer) -> Iterator[FakeServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    yield from _serve(FakeServer())


@pytest.fixture
def refusing() -> Iterator[FakeServer]:
    yield from _serve(FakeServer(fail_update=True))


def test_a_push_is_one_round_trip_per_server_over_gloo(fake: FakeServer) -> None:
    state = {"module.w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    with WeightSyncer([fake.url], master_address="127.0.0.1", master_port=0, timeout_s=30) as s:
        s.init()
        s.push(state, version=3)
        assert s.weight_versions() == {fake.url: "3"}
        assert s.last.bytes == 6 * 4 + 2 * 2
    assert fake.calls == [
        "GET /get_world_size",
        "POST /init_weight_transfer_engine",
        f"POST {PUSH_PATH}",  # one round trip per push
        "GET /weight_info",  # the test's own weight_versions()
    ]
    assert set(fake.weights) == {"w", "b"}
    assert torch.equal(fake.weights["w"], state["module.w"])
    assert torch.equal(fake.weights["b"], state["b"])


def test_a_refused_update_surfaces_the_server_error_at_once(refusing: FakeServer) -> None:
    syncer = WeightSyncer([refusing.url], master_address="127.0.0.1", master_port=0, timeout_s=30)
    syncer.init()
    start = time.monotonic()
    with pytest.raises(WeightSyncError, match=r"push_weights failed: HTTP 500"):
        syncer.push({"w": torch.zeros(4)}, version=1)
    # The server's answer ends the push; the broadcast it never joined is not waited for.
    assert time.monotonic() - start < 10
    assert not syncer._initialized  # the group is in an unknown state: init again
    syncer.close()


def test_servers_are_pushed_at_once_and_each_gets_every_byte() -> None:
    servers = [FakeServer() for _ in range(3)]
    serving = [_serve(s) for s in servers]
    for gen in serving:
        next(gen)
    try:
        gen_ = torch.Generator().manual_seed(1)
        state = {f"layer{i}.weight": torch.randn(64, 32, generator=gen_) for i in range(5)}
        urls = [s.url for s in servers]
        with WeightSyncer(
            urls, master_address="127.0.0.1", master_port=0, timeout_s=30,
            max_bucket_bytes=3 * 64 * 32 * 4,  # two buckets
        ) as syncer:  # fmt: skip
            syncer.init()
            for version in (1, 2):
                state = {k: v + 1 for k, v in state.items()}
                syncer.push(state, version=version)
            assert syncer.weight_versions() == dict.fromkeys(urls, "2")
        for s in servers:
            assert s.calls.count(f"POST {PUSH_PATH}") == 2
            assert set(s.weights) == set(state)
            assert all(torch.equal(s.weights[k], v) for k, v in state.items())
    finally:
        for gen in serving:
            next(gen, None)


def test_push_requests_are_checked_before_the_server_is_touched() -> None:
    packed = pack_weights([("w", torch.zeros(2))])
    body = json.loads(json.dumps({"update_info": packed.update_info(), "weight_version": "3"}))
    assert parse_push_request(body) == (packed.update_info(), "3", "wait")
    bad = [
        ([], "JSON object"),
        ({"weight_version": "3"}, "buckets"),
        ({**body, "weight_version": 3}, "weight_version"),
        ({**body, "pause_mode": "later"}, "pause_mode"),
        ({**body, "update_info": {"buckets": [{"dtype": "float99", "names": [], "shapes": []}]}},
         "unknown dtype"),
    ]  # fmt: skip
    for data, message in bad:
        with pytest.raises(PushRequestError, match=message):
            parse_push_request(data)
    assert routes.PUSH_PATH == PUSH_PATH  # repeated there so matching needs no torch


def test_the_push_route_exists_only_in_dev_mode_and_passes_other_paths_on() -> None:
    import asyncio

    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def request(route: routes.PushRoute, path: str, body: bytes) -> list[Any]:
        sent: list[Any] = []

        async def receive() -> Any:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
        await route(scope, receive, send)
        return sent

    on = routes.PushRoute(app, env={"VLLM_SERVER_DEV_MODE": "1"})
    off = routes.PushRoute(app, env={})
    answer = asyncio.run(request(on, PUSH_PATH, b'{"weight_version": "1"}'))
    assert answer[0]["status"] == 400 and b"buckets" in answer[1]["body"]
    assert reached == []  # answered by the route, the server never saw it
    assert asyncio.run(request(on, "/v1/completions", b"{}"))[0]["status"] == 204
    assert asyncio.run(request(off, PUSH_PATH, b"{}"))[0]["status"] == 204  # vLLM's 404
    assert reached == ["/v1/completions", PUSH_PATH]
