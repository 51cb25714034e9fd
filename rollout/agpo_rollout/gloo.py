"""Process groups of the `gloo` weight-transfer backend: rendezvous, group, broadcast.

Torch only, like `wire`: the trainer side (`agpo_trainer.rollout.weight_sync`) and the vLLM
worker engine (`agpo_rollout.engine`) both build on it. One group per vLLM server:

- Rendezvous: the trainer hosts a `TCPStore` on `master_port`; each server's workers join
  it as clients. Every group lives under its own key prefix (`group_name`), so one port
  serves all replicas and a re-initialised group never reads a stale key.
- Group: a `ProcessGroupGloo` built directly on that store; rank 0 is the trainer, the
  server's workers are ranks `rank_offset..world_size-1`. Neither side's default process
  group is touched.
- Update: rank 0 broadcasts the packed buckets of `wire` in order.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from agpo_rollout.wire import PackedWeights

DEFAULT_TIMEOUT_S = 120.0


@dataclass(kw_only=True)
class GlooInitInfo:
    """The `init_info` of `POST /init_weight_transfer_engine` for the gloo backend.

    The trainer sends `dataclasses.asdict(...)` of it; the worker engine parses it into a
    subclass of this class, so the field names exist once.
    """

    master_address: str
    master_port: int
    group_name: str
    rank_offset: int = 1
    world_size: int
    timeout_s: float = DEFAULT_TIMEOUT_S


_STORES: dict[int, Any] = {}  # port -> torch.distributed.TCPStore
_STORES_LOCK = threading.Lock()


def trainer_store(port: int, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """The rendezvous store this process hosts on `port` (created once, then reused).

    One store serves every server's group (distinct key prefixes), so the rollout pods
    need a single rendezvous port on the trainer. `port=0` picks a free port (tests);
    read the real one from `.port`.
    """
    with _STORES_LOCK:
        if port and port in _STORES:
            return _STORES[port]
        store = dist.TCPStore(
            "0.0.0.0",
            port,
            world_size=None,
            is_master=True,
            timeout=timedelta(seconds=timeout_s),
            wait_for_workers=False,
        )
        _STORES[store.port] = store
        return store


def _gloo_device() -> Any:
    # Same convention as torch.distributed: GLOO_SOCKET_IFNAME picks the interface (pods
    # with several NICs); otherwise gloo resolves this host's name (the pod IP in k8s).
    ifname = os.environ.get("GLOO_SOCKET_IFNAME")
    if ifname:
        return dist.ProcessGroupGloo.create_device(interface=ifname.split(",")[0])
    return dist.ProcessGroupGloo.create_default_device()


def new_gloo_group(
    store: Any, group_name: str, rank: int, world_size: int, timeout_s: float
) -> dist.ProcessGroupGloo:
    """A standalone gloo group on `store` under `group_name`; blocks until all ranks join."""
    options = dist.ProcessGroupGloo._Options()
    options._timeout = timedelta(seconds=timeout_s)
    options._devices = [_gloo_device()]
    options._threads = 2
    prefixed = dist.PrefixStore(f"agpo-wt/{group_name}", store)
    return dist.ProcessGroupGloo(prefixed, rank, world_size, options)


def join_gloo_group(
    master_address: str,
    master_port: int,
    group_name: str,
    rank: int,
    world_size: int,
    timeout_s: float,
) -> dist.ProcessGroupGloo:
    """Worker side: connect to the trainer's store and join the group."""
    store = dist.TCPStore(
        master_address,
        master_port,
        world_size=None,
        is_master=False,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )
    return new_gloo_group(store, group_name, rank, world_size, timeout_s)


def start_broadcast(group: Any, buffer: torch.Tensor) -> Any:
    """Post a broadcast from rank 0 (gloo runs it on its own thread); returns the work."""
    return group.broadcast([buffer], dist.BroadcastOptions())  # root rank 0 by default


def wait_work(work: Any, *, timeout_s: float) -> None:
    work.wait(timedelta(seconds=timeout_s))


def broadcast_buffer(group: Any, buffer: torch.Tensor, *, timeout_s: float) -> None:
    wait_work(start_broadcast(group, buffer), timeout_s=timeout_s)


@dataclass
class GlooSender:
    """Trainer side (rank 0) of one server's group. Needs only torch; no vLLM import."""

    group: dist.ProcessGroupGloo
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def open(
        cls,
        store: Any,
        group_name: str,
        world_size: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> GlooSender:
        """Join as rank 0; blocks until the server's workers joined (run the server's
        `/init_weight_transfer_engine` call concurrently)."""
        return cls(new_gloo_group(store, group_name, 0, world_size, timeout_s), timeout_s)

    def send(self, packed: PackedWeights) -> None:
        for i, buffer in enumerate(packed.buffers):
            packed.wait_ready(i, self.timeout_s)  # filled while the previous one is sent
            broadcast_buffer(self.group, buffer, timeout_s=self.timeout_s)

    def close(self) -> None:
        # Dropping the last reference tears the gloo pairs down; there is no explicit
        # destroy for a group created outside the default-group registry.
        self.group = None  # type: ignore[assignment]
