"""Torch-only pieces of the `gloo` weight-transfer backend, shared by both sides.

The trainer imports this module without vLLM (the trainer image need not install it); the
vLLM worker engine in `gloo_engine.py` builds on it.

Wire protocol (one group per vLLM server, see docs/weight-sync.md):
- Rendezvous: the trainer hosts a `TCPStore` on `master_port`; each server's workers join
  it as clients. Every group lives under its own key prefix (`group_name`), so one port
  serves all replicas and a re-initialised group never reads a stale key.
- Group: a `ProcessGroupGloo` built directly on that store; rank 0 is the trainer, the
  server's workers are ranks `rank_offset..world_size-1`. Neither side's default process
  group is touched.
- Update: parameters are packed per dtype into flat byte buffers of at most
  `max_bucket_bytes` ("buckets"); the update_info JSON lists each bucket's dtype, names and
  shapes, and rank 0 broadcasts the buckets in order as uint8 tensors (byte views make
  every dtype, bfloat16 included, travel over gloo).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_BUCKET_BYTES = 256 * 1024 * 1024
DEFAULT_TIMEOUT_S = 120.0
# Wrapper prefixes that DDP/FSDP1 (`module.`) and torch.compile (`_orig_mod.`) add to
# parameter names; vLLM's `load_weights` expects the bare Hugging Face names.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class Bucket:
    """One flat buffer on the wire: parameters of a single dtype, in order."""

    dtype: str
    names: list[str]
    shapes: list[list[int]]

    @property
    def numels(self) -> list[int]:
        return [_numel(s) for s in self.shapes]

    @property
    def nbytes(self) -> int:
        return sum(self.numels) * dtype_from_name(self.dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "names": self.names, "shapes": self.shapes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Bucket:
        names, shapes = list(data["names"]), [list(s) for s in data["shapes"]]
        if len(names) != len(shapes):
            raise ValueError(f"bucket has {len(names)} names but {len(shapes)} shapes")
        dtype_from_name(data["dtype"])  # validate early, before any byte is received
        return cls(dtype=str(data["dtype"]), names=names, shapes=shapes)


@dataclass
class PackedWeights:
    """Buckets plus their byte buffers, ready to broadcast to any number of groups."""

    buckets: list[Bucket]
    buffers: list[torch.Tensor] = field(repr=False)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self.buffers)

    def update_info(self) -> dict[str, Any]:
        return {"buckets": [b.to_json() for b in self.buckets]}


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in weight update")
    return dtype


def normalize_name(name: str) -> str:
    """Strip wrapper prefixes so names match the checkpoint (and vLLM's loader)."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name.removeprefix(prefix), True
    return name


def plan_buckets(
    metas: Iterable[tuple[str, torch.dtype, Sequence[int]]],
    max_bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> list[Bucket]:
    """Group parameters by dtype (first-seen order) and cut each group at `max_bucket_bytes`.

    A parameter larger than the limit gets a bucket of its own. Pure: the same metadata
    always gives the same plan, which is what lets the receiver rebuild the tensors.
    """
    if max_bucket_bytes <= 0:
        raise ValueError(f"max_bucket_bytes must be positive, got {max_bucket_bytes}")
    by_dtype: dict[str, list[tuple[str, list[int]]]] = {}
    for name, torch_dtype, shape in metas:
        by_dtype.setdefault(dtype_name(torch_dtype), []).append((name, [int(d) for d in shape]))
    buckets: list[Bucket] = []
    for dtype, params in by_dtype.items():
        itemsize = dtype_from_name(dtype).itemsize
        names: list[str] = []
        shapes: list[list[int]] = []
        size = 0
        for name, shape in params:
            nbytes = _numel(shape) * itemsize
            if names and size + nbytes > max_bucket_bytes:
                buckets.append(Bucket(dtype, names, shapes))
                names, shapes, size = [], [], 0
            names.append(name)
            shapes.append(shape)
            size += nbytes
        if names:
            buckets.append(Bucket(dtype, names, shapes))
    return buckets


def pack_weights(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    max_bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    cast_dtype: torch.dtype | None = None,
) -> PackedWeights:
    """Copy detached CPU tensors into per-dtype byte buffers.

    `cast_dtype` converts floating-point tensors first (e.g. a float32 master copy sent as
    bfloat16 to a bfloat16 server halves the bytes); vLLM's loaders cast on copy anyway.
    """
    tensors: dict[str, torch.Tensor] = {}
    for raw_name, t in named_tensors:
        name = normalize_name(raw_name)
        if name in tensors:
            raise ValueError(f"duplicate parameter name {name!r} (from {raw_name!r})")
        t = t.detach()
        if hasattr(t, "full_tensor"):  # DTensor shard (FSDP2/TP): gather, a collective
            t = t.full_tensor()
        if cast_dtype is not None and t.is_floating_point():
            t = t.to(cast_dtype)
        tensors[name] = t.to("cpu")
    buckets = plan_buckets(((n, t.dtype, t.shape) for n, t in tensors.items()), max_bucket_bytes)
    buffers = []
    for bucket in buckets:
        flat = torch.cat([tensors[n].contiguous().reshape(-1) for n in bucket.names])
        buffers.append(flat.view(torch.uint8))
    return PackedWeights(buckets=buckets, buffers=buffers)


def unpack_bucket(buffer: torch.Tensor, bucket: Bucket) -> Iterator[tuple[str, torch.Tensor]]:
    """Views of `buffer` (uint8) as the bucket's named tensors (no copy)."""
    if buffer.numel() != bucket.nbytes:
        raise ValueError(f"bucket buffer has {buffer.numel()} bytes, expected {bucket.nbytes}")
    flat = buffer.view(dtype_from_name(bucket.dtype))
    offset = 0
    for name, shape, numel in zip(bucket.names, bucket.shapes, bucket.numels, strict=True):
        yield name, flat[offset : offset + numel].view(shape)
        offset += numel


# --- process groups -----------------------------------------------------------------------

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


def broadcast_buffer(group: Any, buffer: torch.Tensor, *, timeout_s: float) -> None:
    work = group.broadcast([buffer], dist.BroadcastOptions())  # root rank 0 by default
    work.wait(timedelta(seconds=timeout_s))


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
        for buffer in packed.buffers:
            broadcast_buffer(self.group, buffer, timeout_s=self.timeout_s)

    def close(self) -> None:
        # Dropping the last reference tears the gloo pairs down; there is no explicit
        # destroy for a group created outside the default-group registry.
        self.group = None  # type: ignore[assignment]
