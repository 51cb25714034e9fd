"""Step-time breakdown of a real local AGPO run (``agpo run``: vLLM server + torchrun).

Usage (from the repository root, in the project's environment)::

    python benchmarks/bench_trainer.py [--steps 30] [--job manifests/samples/tiny-cpu.yaml] \
        [--warmup 2] [--keep-workdir]

Runs ``agpo run JOB --steps N --workdir TMP`` (the launcher users run), then parses the JSON
record rank 0 logs per step into ``TMP/logs/trainer.log`` and prints, per component of a step,
mean / p50 / p95 in ms and its share of the mean step:

- rollout: ``rolloutSeconds``, generation through the vLLM server(s) (HTTP included);
- reward+advantages: ``rewardSeconds``, decoding, scoring, advantages and zero-variance mask;
- fwd/bwd/optimizer: ``trainSeconds``, the policy loss, backward, DDP all-reduce, optimizer
  step (measured on rank 0);
- weight sync: ``weightSyncSeconds``, pushing the new weights into the server(s);
- other: the rest of ``stepSeconds``: broadcasting the batch to the ranks, checkpoints (every
  ``checkpoint.everySteps`` steps and the last one), metrics and logging.

The first ``--warmup`` steps are left out of the statistics. Startup is derived from
timestamps: the launcher's own output (read as it is printed) and the trainer's log lines.
Every process the launcher starts is stopped on exit, error or Ctrl-C (the launcher is
interrupted so that it stops its servers and torchrun; any process group of it still alive
afterwards is killed). It is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for sub in ("trainer", "operator"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

DEFAULT_JOB = ROOT / "manifests" / "samples" / "tiny-cpu.yaml"
# "2025-01-31 12:00:00,123 rank0 INFO agpo_trainer: step {...}" (agpo_trainer/__main__.py)
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) rank0 (\w+) ([\w.]+): (.*)$")

COMPONENTS = [
    ("rollout (generation)", "rolloutSeconds"),
    ("reward+advantages", "rewardSeconds"),
    ("fwd/bwd/optimizer", "trainSeconds"),
    ("weight sync", "weightSyncSeconds"),
]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def log_time(stamp: str) -> float:
    """A logging ``asctime`` (local time, ms) as a Unix timestamp."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# --------------------------------------------------------------------------- processes
def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgid) of every live (non-zombie) process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def descendant_groups(root: int) -> set[int]:
    """Process groups of ``root``'s descendants (the launcher puts each child in its own)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    groups, stack = set(), [root]
    while stack:
        pid = stack.pop()
        for child in children.get(pid, []):
            groups.add(table[child][1])
            stack.append(child)
    return groups


def role_of(proc: Any) -> str | None:
    """What a process of the run is: a vLLM server (its whole process group: the API server
    and its engine-core child), a trainer rank (torchrun's workers, by their RANK), or None."""
    import psutil

    try:
        cmd = " ".join(proc.cmdline())
        if "vllm.entrypoints" in cmd or "VLLM" in proc.name():
            return f"vLLM server (process group {os.getpgid(proc.pid)})"
        if "agpo_trainer" in cmd and "torchrun" not in cmd and "torch.distributed.run" not in cmd:
            return f"trainer rank {proc.environ().get('RANK', '?')}"
    except (psutil.Error, ProcessLookupError):
        return None
    return None


def high_water_mark(pid: int) -> int:
    """A process's peak resident memory so far (``VmHWM`` of /proc/PID/status), in bytes: the
    kernel's own peak, so no spike between two samples is missed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_by_role(groups: set[int]) -> dict[str, int]:
    """Peak resident memory so far, summed per role (:func:`role_of`) over the run's process
    groups; a vLLM server's children (its engine core) count with it (a sum of peaks: an upper
    bound where they peak at different times)."""
    import psutil

    seen: list[tuple[int, str | None, int]] = []  # (pgid, role, peak resident bytes)
    for proc in psutil.process_iter(["pid"]):
        try:
            pgid = os.getpgid(proc.pid)
            if pgid in groups:
                seen.append((pgid, role_of(proc), high_water_mark(proc.pid)))
        except (psutil.Error, ProcessLookupError, OSError):
            continue
    servers = {pgid: role for pgid, role, _ in seen if role and role.startswith("vLLM")}
    out: dict[str, int] = {}
    for pgid, role, rss in seen:
        role = role or servers.get(pgid)
        if role is not None:
            out[role] = out.get(role, 0) + rss
    return out


def group_alive(pgid: int) -> bool:
    return any(g == pgid for _, g in _proc_table().values())


@dataclass
class Launch:
    """The ``agpo run`` process, its output lines with arrival times, its process groups."""

    proc: subprocess.Popen[str]
    lines: list[tuple[float, str]] = field(default_factory=list)
    groups: set[int] = field(default_factory=set)
    peak_rss: dict[str, int] = field(default_factory=dict)  # role -> bytes, the peak seen

    def reader(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def track(self) -> None:
        self.groups |= descendant_groups(self.proc.pid)
        for role, rss in memory_by_role(self.groups).items():
            self.peak_rss[role] = max(rss, self.peak_rss.get(role, 0))

    def stop(self) -> list[int]:
        """Interrupt the launcher (it stops its servers and torchrun), then kill whatever of
        its process groups is still alive. Returns the groups that had to be killed."""
        self.track()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)  # the launcher's own clean shutdown
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.groups.add(self.proc.pid)
        killed = []
        for pgid in sorted(self.groups - {os.getpgid(0)}):
            if not group_alive(pgid):
                continue
            killed.append(pgid)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, sig)
                deadline = time.monotonic() + 10
                while group_alive(pgid) and time.monotonic() < deadline:
                    time.sleep(0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        return killed


@contextlib.contextmanager
def agpo_run_process(cmd: list[str], env: dict[str, str], timeout_s: float) -> Iterator[Launch]:
    """Start ``cmd`` (an ``agpo run``) in its own session, wait until it exits (remembering
    every process group the launcher starts), then yield its :class:`Launch`; on leaving,
    every leftover process group is killed (and said on stderr)."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    launch = Launch(proc)
    reader = threading.Thread(target=launch.reader, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None:
            launch.track()
            if time.monotonic() > deadline:
                raise TimeoutError(f"agpo run did not finish in {timeout_s:.0f}s")
            time.sleep(0.5)
        reader.join(timeout=5)
        yield launch
    finally:
        killed = launch.stop()
        if killed:
            print(f"note: killed leftover process groups {killed}", file=sys.stderr)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# --------------------------------------------------------------------------- parsing
def parse_trainer_log(path: Path) -> tuple[list[tuple[float, dict[str, Any]]], dict[str, float]]:
    """Step records with their log time, and the times of notable rank-0 lines."""
    steps: list[tuple[float, dict[str, Any]]] = []
    marks: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        t, msg = log_time(m.group(1)), m.group(4)
        marks.setdefault("first_rank0_line", t)
        if msg.startswith("step {"):
            steps.append((t, json.loads(msg[len("step ") :])))
        elif msg.startswith("format warm-up:"):
            marks["format_warmup_done"] = t
    return steps, marks


def first_time(lines: list[tuple[float, str]], needle: str) -> float | None:
    return next((t for t, line in lines if needle in line), None)


# --------------------------------------------------------------------------- report
def report(
    args: argparse.Namespace,
    job: Any,
    launch: Launch,
    t_launch: float,
    t_exit: float,
    steps: list[tuple[float, dict[str, Any]]],
    marks: dict[str, float],
) -> None:
    from agpo_api.resolved import resolve

    spec = job.spec
    completions = spec.training.prompts_per_step * spec.algorithm.group_size
    measured = [r for _, r in steps if r["step"] > args.warmup]
    if not measured:
        raise SystemExit(f"only {len(steps)} step(s) logged; nothing left after the warm-up")

    print(
        f"\nstep-time breakdown: steps {measured[0]['step']}-{measured[-1]['step']} "
        f"({len(measured)} steps; the first {args.warmup} skipped as warm-up)"
    )
    header = f"{'component':<22}{'mean ms':>10}{'p50 ms':>10}{'p95 ms':>10}{'share':>8}"
    print(header)
    print("-" * len(header))
    step_mean = sum(r["stepSeconds"] for r in measured) / len(measured)
    rows = [(name, [r[key] for r in measured]) for name, key in COMPONENTS]
    rows.append(
        (
            "other",
            [r["stepSeconds"] - sum(r[key] for _, key in COMPONENTS) for r in measured],
        )
    )
    rows.append(("step (total)", [r["stepSeconds"] for r in measured]))
    for name, values in rows:
        mean = sum(values) / len(values)
        if name == "step (total)":
            print("-" * len(header))
        print(
            f"{name:<22}{mean * 1e3:>10.1f}{percentile(values, 50) * 1e3:>10.1f}"
            f"{percentile(values, 95) * 1e3:>10.1f}{mean / step_mean:>8.1%}"
        )

    tokens = [r["completionTokensMean"] * completions for r in measured]
    rollout = [r["rolloutSeconds"] for r in measured]
    per_step_tps = [t / s for t, s in zip(tokens, rollout, strict=True) if s > 0]
    resample = resolve(spec).algorithm.resamples
    print(
        f"\nrollout: {completions} completions per step ({spec.training.prompts_per_step} prompts"
        f" x group {spec.algorithm.group_size}), mean {sum(tokens) / len(tokens) / completions:.1f}"
        f" tokens each (max {spec.training.max_completion_tokens})"
        + (" [resample mode: extra rounds not counted]" if resample else "")
    )
    print(
        f"completion tokens/s during rollout: {sum(tokens) / sum(rollout):.0f} overall "
        f"(per step p50 {percentile(per_step_tps, 50):.0f}, "
        f"min {min(per_step_tps):.0f}, max {max(per_step_tps):.0f})"
    )

    # ---- wall-clock timeline
    t_ready = first_time(launch.lines, "starting torchrun")
    first_t, first = steps[0]
    first_start = first_t - first["stepSeconds"]
    last_t = steps[-1][0]
    loop_s = last_t - first_start
    print(f"\ntimeline (wall clock, s; total {t_exit - t_launch:.1f} s for {len(steps)} steps)")
    timeline: list[tuple[str, float | None]] = [
        ("startup: launcher + vLLM server until healthy", t_ready and t_ready - t_launch),
        ("startup: trainer until the first step begins", t_ready and first_start - t_ready),
    ]
    if t_ready and "format_warmup_done" in marks:
        timeline += [
            (
                "  of which torchrun + model load + format warm-up",
                marks["format_warmup_done"] - t_ready,
            ),
            (
                "  of which connect + initial weight push",
                first_start - marks["format_warmup_done"],
            ),
        ]
    timeline += [
        ("startup total (launch -> first step begins)", first_start - t_launch),
        (f"training loop ({len(steps)} steps, incl. warm-up steps)", loop_s),
        ("shutdown (last step -> launcher exit)", t_exit - last_t),
        ("end-to-end wall time", t_exit - t_launch),
    ]
    for name, value in timeline:
        print(f"  {name:<52}{'?' if value is None else f'{value:8.1f}'}")
    print(
        f"  steady-state steps/s (measured steps): {1 / step_mean:.2f}; "
        f"loop share of wall time: {loop_s / (t_exit - t_launch):.0%}"
    )
    print("\npeak resident memory (each process's VmHWM; a server's engine process added in)")
    for role, rss in sorted(launch.peak_rss.items()):
        print(f"  {role:<52}{rss / 2**30:8.2f} GiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps to run")
    parser.add_argument("--job", type=Path, default=DEFAULT_JOB, help="AGPOJob YAML")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the stats")
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and checkpoints")
    parser.add_argument("--timeout", type=float, default=1800.0, help="whole run limit, s")
    args = parser.parse_args(argv)
    # Ctrl-C and SIGTERM run the same cleanup (finally blocks stop every process). SIGINT is
    # (re)installed explicitly: a shell starts background jobs with SIGINT ignored, and an
    # ignored signal would also be inherited by the processes started here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    from agpo_api import load_job
    from agpo_trainer.rollout.server import free_port

    job_file = args.job.resolve()
    job = load_job(job_file)
    if args.steps > job.spec.training.steps:
        print(f"note: the job has only {job.spec.training.steps} steps; --steps caps at that")
    workdir = Path(tempfile.mkdtemp(prefix="agpo-bench-trainer-"))
    cmd = [
        sys.executable, "-m", "agpo_cli", "run", str(job_file),
        "--steps", str(args.steps), "--workdir", str(workdir),
    ]  # fmt: skip
    env = {**os.environ, "AGPO_METRICS_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
    shown = job_file.relative_to(ROOT) if job_file.is_relative_to(ROOT) else job_file
    print(f"command: agpo run {shown} --steps {args.steps} --workdir {workdir}")
    print(f"load average before: {loadavg()} (cpus: {os.cpu_count()})", flush=True)

    ok = False
    t_launch = time.time()
    try:
        with agpo_run_process(cmd, env, args.timeout) as launch:
            t_exit = time.time()
            load_after = loadavg()
            trainer_log = workdir / "logs" / "trainer.log"
            if launch.proc.returncode != 0:
                tail = "\n".join(line for _, line in launch.lines[-20:])
                print(f"agpo run failed (exit {launch.proc.returncode}):\n{tail}", file=sys.stderr)
                return 1
            steps, marks = parse_trainer_log(trainer_log)
            report(args, job, launch, t_launch, t_exit, steps, marks)
            print(f"\nload average after: {load_after}")
            ok = True
    except KeyboardInterrupt:
        print("interrupted; stopping every process", file=sys.stderr)
        return 130
    finally:
        if args.keep_workdir or not ok:
            print(f"workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
