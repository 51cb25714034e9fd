"""Operator benchmark: AGPOJob creation -> all its children created, and the operator's memory.

Runs the real operator (``python -m agpo_operator``, a separate process) against the emulated
API server of the operator tests (``tests/operator/kube_emulator.py``, in this process) and
measures, from the emulator's request log:

* latency: from the arrival of an AGPOJob's POST to the answer of its last child's POST
  (10 children for the tiny-cpu sample), p50 and p95,
  - for one job at a time (``--single`` sequential jobs), and
  - for ``--burst`` jobs created at once;
* the operator process' peak RSS (``VmHWM`` from /proc).

Usage::

    python benchmarks/bench_operator.py [--single 20] [--burst 100] [--json results.json]

``BENCH_OPERATOR_LOG=FILE`` keeps the operator's log.

The emulator shares this machine's cores with the operator; numbers are for comparison
between versions on the same machine, not for a real API server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "operator"))

import kmock  # noqa: E402
from kube_emulator import Cluster  # noqa: E402

NAMESPACE = "bench"
SAMPLE = ROOT / "manifests" / "samples" / "tiny-cpu.yaml"
CHILDREN_PER_JOB = 10  # tiny-cpu: SA, 2 NetworkPolicies, Secret, ConfigMap, 3 Services, STS, Job
AGPOJOBS = kmock.resource("agpo.dev", "v1alpha1", "agpojobs")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    """Creates jobs and follows the emulator's request log incrementally."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.template = yaml.safe_load(SAMPLE.read_text())
        self.seen = 0  # entries of cluster.served already read
        self.start: dict[str, float] = {}  # job -> arrival of its POST
        self.children: dict[str, list[float]] = {}  # job -> answers of its children's POSTs

    async def create(self, name: str) -> None:
        doc = {**self.template, "metadata": {"name": name}}
        path = f"/apis/agpo.dev/v1alpha1/namespaces/{NAMESPACE}/agpojobs"
        async with self.cluster.post(path, json=doc) as response:
            assert response.status == 200, await response.text()

    def _read_log(self) -> None:
        served = self.cluster.served
        for s in served[self.seen :]:
            req = s.request
            if req.method.value != "POST" or s.status >= 300 or not isinstance(req.data, dict):
                continue
            meta = req.data.get("metadata", {})
            job = (meta.get("labels") or {}).get("agpo.dev/job")
            if req.resource == AGPOJOBS:
                self.start[meta.get("name", "")] = s.at
            elif job is not None:
                self.children.setdefault(job, []).append(s.done)
        self.seen = len(served)

    def latency(self, name: str) -> float | None:
        """Seconds from the job's POST to its last child's POST answered (None: not yet)."""
        done = self.children.get(name, [])
        if name not in self.start or len(done) < CHILDREN_PER_JOB:
            return None
        return max(done) - self.start[name]

    async def wait_for(self, names: list[str], timeout: float) -> list[float]:
        deadline = time.monotonic() + timeout
        while True:
            self._read_log()
            latencies = [self.latency(n) for n in names]
            if all(v is not None for v in latencies):
                return [v for v in latencies if v is not None]
            if time.monotonic() > deadline:
                done = sum(v is not None for v in latencies)
                raise TimeoutError(f"only {done}/{len(names)} jobs got all children in {timeout}s")
            await asyncio.sleep(0.05)


async def run(single: int, burst: int, timeout: float) -> dict[str, Any]:
    async with Cluster() as cluster, kmock.Server(cluster) as server:
        cluster.resources.load_bundled()
        cluster.resources[AGPOJOBS] = kmock.ResourceInfo(
            kind="AGPOJob",
            namespaced=True,
            subresources={"status"},
            verbs={"get", "list", "watch", "create", "patch", "delete"},
        )
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "v1",
                        "kind": "Config",
                        "current-context": "bench",
                        "clusters": [
                            {"name": "bench", "cluster": {"server": str(server.url).rstrip("/")}}
                        ],
                        "users": [{"name": "bench", "user": {"token": "bench"}}],
                        "contexts": [
                            {"name": "bench", "context": {"cluster": "bench", "user": "bench"}}
                        ],
                    }
                )
            )
            env = {
                **os.environ,
                "KUBECONFIG": str(kubeconfig),
                "AGPO_HEALTH_PORT": "0",
                "AGPO_METRICS_PORT": "0",
                "AGPO_TRAINER_STATUS_URL": "http://127.0.0.1:9/{namespace}/{job}",
            }
            env.pop("KUBERNETES_SERVICE_HOST", None)
            log_path = os.environ.get("BENCH_OPERATOR_LOG", os.devnull)  # the operator's log
            with open(log_path, "w") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "agpo_operator"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
                try:
                    return await measure(Bench(cluster), proc, single, burst, timeout)
                finally:
                    proc.terminate()
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()


async def measure(
    bench: Bench, proc: subprocess.Popen[bytes], single: int, burst: int, timeout: float
) -> dict[str, Any]:
    started = time.monotonic()
    while not any(  # requests are logged on arrival (a watch is answered only at its end)
        r.resource == AGPOJOBS and r.params.get("watch") == "true" for r in bench.cluster._requests
    ):
        if proc.poll() is not None or time.monotonic() - started > 60:
            raise RuntimeError("the operator did not start watching AGPOJobs")
        await asyncio.sleep(0.05)
    idle_rss = peak_rss_mib(proc.pid)

    one: list[float] = []
    for i in range(single):
        name = f"single-{i}"
        await bench.create(name)
        one += await bench.wait_for([name], timeout)

    names = [f"burst-{i}" for i in range(burst)]
    cpu0, emulator_cpu0 = cpu_seconds(proc.pid), time.process_time()
    t0 = time.monotonic()
    await asyncio.gather(*(bench.create(n) for n in names))
    many = await bench.wait_for(names, timeout)
    wall = time.monotonic() - t0
    operator_cpu = cpu_seconds(proc.pid) - cpu0
    emulator_cpu = time.process_time() - emulator_cpu0
    # Let the operator settle (status writes of all jobs) before reading its peak memory.
    await asyncio.sleep(2.0)
    return {
        "single_jobs": single,
        "single_p50_s": statistics.median(one) if one else None,
        "single_p95_s": percentile(one, 95) if one else None,
        "burst_jobs": burst,
        "burst_p50_s": statistics.median(many) if many else None,
        "burst_p95_s": percentile(many, 95) if many else None,
        "burst_all_children_s": wall,
        "burst_operator_cpu_s": operator_cpu,
        "burst_emulator_cpu_s": emulator_cpu,
        "operator_rss_idle_mib": idle_rss,
        "operator_peak_rss_mib": peak_rss_mib(proc.pid),
        "api_requests": len(bench.cluster.served),
        "error_responses": sum(s.status >= 400 for s in bench.cluster.served),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=20, help="jobs created one at a time")
    parser.add_argument("--burst", type=int, default=100, help="jobs created at once")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per wait")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    results = asyncio.run(run(args.single, args.burst, args.timeout))
    width = max(map(len, results))
    for key, value in results.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
