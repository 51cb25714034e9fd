"""The wire format of a weight update, shared by the trainer and the vLLM workers.

Torch only (no vLLM, no process groups): the trainer packs with it, the worker engine
(`agpo_rollout.engine`) unpacks with it, and both read the same `update_info` schema, so the
two sides cannot drift apart. See docs/weight-sync.md.

- Parameters are grouped per dtype (first-seen order) into flat byte buffers of at most
  `max_bucket_bytes` ("buckets"); byte views make every dtype, bfloat16 included, travel
  as `uint8`.
- `update_info` = `{"buckets": [{"dtype": "float32", "names": [...], "shapes": [...]}]}`,
  the buckets in the order rank 0 broadcasts them.
- Names are the Hugging Face checkpoint names: wrapper prefixes are stripped.
- A push is one request, `POST /agpo/push_weights` (`PUSH_PATH`, served by
  `agpo_rollout.routes`): `{"update_info": ..., "weight_version": "7", "pause_mode": "wait"}`
  (`push_request` builds it, `parse_push_request` checks it), while the buckets are
  broadcast.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

# 32 MiB: large enough that gloo's per-message cost is noise (~0.1 ms against ~15 ms of
# bytes on loopback), small enough that packing, sending and loading overlap across buckets
# (benchmarks/bench_weight_sync.py, 50M parameters: 1.4x a raw transfer with 32 MiB, one
# 203 MB bucket cannot overlap anything).
DEFAULT_BUCKET_BYTES = 32 * 1024 * 1024
#: The plugin's one-round-trip push (pause, start, update, finish, resume, version).
PUSH_PATH = "/agpo/push_weights"
PAUSE_MODES = ("wait", "abort", "keep")
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
    """Buckets plus their byte buffers, ready to broadcast to any number of groups.

    `ready[i]` is set once buffer `i` is filled (`Packer.pack(..., background=True)` fills
    them on a thread while the first ones are already being sent); `None`: all filled.
    Senders call `wait_ready(i)` before sending buffer `i`.
    """

    buckets: list[Bucket]
    buffers: list[torch.Tensor] = field(repr=False)
    ready: list[threading.Event] | None = field(default=None, repr=False)
    errors: list[BaseException] = field(default_factory=list, repr=False)

    def wait_ready(self, index: int, timeout_s: float) -> None:
        if self.ready is not None and not self.ready[index].wait(timeout_s):
            raise TimeoutError(f"bucket {index} not packed within {timeout_s:.0f}s")
        if self.errors:
            raise RuntimeError(f"packing the weights failed: {self.errors[0]}")

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self.buffers)

    def update_info(self) -> dict[str, Any]:
        return {"buckets": [b.to_json() for b in self.buckets]}


def parse_buckets(buckets: Iterable[Mapping[str, Any]]) -> list[Bucket]:
    """The `buckets` list of an update_info, validated (raises ValueError)."""
    return [Bucket.from_json(dict(b)) for b in buckets]


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


def _collect(
    named_tensors: Iterable[tuple[str, torch.Tensor]], cast_dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """Detached, gathered, optionally cast tensors under their checkpoint names."""
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
        tensors[name] = t
    return tensors


def _fill(buffer: torch.Tensor, bucket: Bucket, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy the bucket's tensors into `buffer` (uint8, CPU) in order."""
    flat = buffer.view(dtype_from_name(bucket.dtype))
    parts = [tensors[n].reshape(-1) for n in bucket.names]
    if any(p.device.type != "cpu" for p in parts):
        # Concatenate where they live (one kernel), then one device-to-host copy per
        # bucket instead of one per tensor.
        device = parts[0].device
        flat.copy_(torch.cat([p.to(device) for p in parts]))
        return
    offset = 0
    for part in parts:
        flat[offset : offset + part.numel()].copy_(part)
        offset += part.numel()


class Packer:
    """Packs parameters into buckets, reusing its CPU buffers from one push to the next.

    The plan (names, shapes, dtypes) of a policy is the same every step, so the buffers
    are allocated once: a push then costs one copy of the bytes, not an allocation (and,
    on Linux, a page fault per 4 KiB page touched for the first time) plus a copy. The
    buffers of the `PackedWeights` it returns are overwritten by the next `pack`.
    """

    def __init__(
        self,
        max_bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        cast_dtype: torch.dtype | None = None,
    ) -> None:
        self.max_bucket_bytes = max_bucket_bytes
        self.cast_dtype = cast_dtype
        self._plan: list[Bucket] = []
        self._buffers: list[torch.Tensor] = []
        self._filling: threading.Thread | None = None

    def pack(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], *, background: bool = False
    ) -> PackedWeights:
        """The packed weights. `background`: return at once and fill the buckets in order
        on a thread (`PackedWeights.ready`), so that bucket k+1 is copied while bucket k
        is on the wire; the caller must not change the tensors until all are sent."""
        if self._filling is not None:  # a failed push may have left one running
            self._filling.join()
            self._filling = None
        tensors = _collect(named_tensors, self.cast_dtype)
        plan = plan_buckets(
            ((n, t.dtype, t.shape) for n, t in tensors.items()), self.max_bucket_bytes
        )
        if plan != self._plan:
            self._buffers = [torch.empty(b.nbytes, dtype=torch.uint8) for b in plan]
            self._plan = plan
        packed = PackedWeights(buckets=plan, buffers=list(self._buffers))
        if not background:
            for bucket, buffer in zip(plan, packed.buffers, strict=True):
                _fill(buffer, bucket, tensors)
            return packed
        packed.ready = [threading.Event() for _ in plan]

        def fill_all() -> None:
            try:
                for bucket, buffer, event in zip(plan, packed.buffers, packed.ready, strict=True):
                    _fill(buffer, bucket, tensors)
                    event.set()
            except BaseException as exc:  # handed to the senders
                packed.errors.append(exc)
                for event in packed.ready or ():
                    event.set()

        self._filling = threading.Thread(target=fill_all, name="agpo-pack", daemon=True)
        self._filling.start()
        return packed


def pack_weights(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    max_bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    cast_dtype: torch.dtype | None = None,
) -> PackedWeights:
    """Copy detached tensors into fresh per-dtype byte buffers on the CPU (where gloo sends
    from). `cast_dtype` converts floating-point tensors first (e.g. a float32 master copy
    sent as bfloat16 to a bfloat16 server halves the bytes); vLLM's loaders cast on copy
    anyway. `Packer` does the same with buffers kept between pushes."""
    return Packer(max_bucket_bytes, cast_dtype).pack(named_tensors)


def unpack_bucket(buffer: torch.Tensor, bucket: Bucket) -> Iterator[tuple[str, torch.Tensor]]:
    """Views of `buffer` (uint8) as the bucket's named tensors (no copy)."""
    if buffer.numel() != bucket.nbytes:
        raise ValueError(f"bucket buffer has {buffer.numel()} bytes, expected {bucket.nbytes}")
    flat = buffer.view(dtype_from_name(bucket.dtype))
    offset = 0
    for name, shape, numel in zip(bucket.names, bucket.shapes, bucket.numels, strict=True):
        yield name, flat[offset : offset + numel].view(shape)
        offset += numel


class PushRequestError(ValueError):
    """A malformed push request: answered 400 before the server is touched."""


def push_request(packed: PackedWeights, version: str, pause_mode: str) -> dict[str, Any]:
    """The JSON body of `POST PUSH_PATH` for `packed`."""
    return {
        "update_info": packed.update_info(),
        "weight_version": version,
        "pause_mode": pause_mode,
    }


def parse_push_request(data: Any) -> tuple[dict[str, Any], str, str]:
    """`(update_info, weight_version, pause_mode)` of a push body, the whole bucket plan
    validated (raises PushRequestError)."""
    if not isinstance(data, dict):
        raise PushRequestError("body must be a JSON object")
    info = data.get("update_info")
    if not isinstance(info, dict) or not isinstance(info.get("buckets"), list):
        raise PushRequestError("update_info.buckets must be a list")
    try:
        parse_buckets(info["buckets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PushRequestError(f"update_info: {exc}") from None
    version = data.get("weight_version")
    if not isinstance(version, str) or not version:
        raise PushRequestError("weight_version must be a non-empty string")
    mode = data.get("pause_mode", "wait")
    if mode not in PAUSE_MODES:
        raise PushRequestError(f"pause_mode must be one of {PAUSE_MODES}, got {mode!r}")
    return info, version, str(mode)
