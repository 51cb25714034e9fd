"""The pure builders: every child object of a job, field by field, without an API server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agpo_api import AGPOJob, parse_job
from agpo_operator.builders import BuildOptions, adopt, build_children
from agpo_operator.builders.common import merge_env

from operator_support import sample

OPTIONS = BuildOptions(trainer_image="trainer:default", rollout_image="rollout:default")
FIELD_REF_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def job(file: str = "tiny-cpu", name: str = "demo", **changes: Any) -> AGPOJob:
    manifest = sample(file, **changes)
    manifest["metadata"] = {"name": name}
    return parse_job(manifest)


def children(
    j: AGPOJob, namespace: str = "team", **kw: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (o["kind"], o["metadata"]["name"]): o for o in build_children(j, namespace, OPTIONS, **kw)
    }


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def rollout_container(objs: dict[tuple[str, str], Any], name: str = "demo") -> dict[str, Any]:
    return objs[("StatefulSet", f"{name}-rollout")]["spec"]["template"]["spec"]["containers"][0]


def trainer_pod(objs: dict[tuple[str, str], Any], name: str = "demo") -> dict[str, Any]:
    return objs[("Job", f"{name}-trainer")]["spec"]["template"]["spec"]


def test_every_child_is_named_labelled_and_namespaced() -> None:
    objs = children(job())
    assert sorted(objs) == sorted([
        ("ServiceAccount", "demo-workload"), ("NetworkPolicy", "demo-rollout"),
        ("NetworkPolicy", "demo-trainer"), ("Secret", "demo-rollout-token"),
        ("ConfigMap", "demo-spec"), ("PersistentVolumeClaim", "demo-checkpoints"),
        ("Service", "demo-rollout"), ("Service", "demo-trainer"),
        ("Service", "demo-trainer-metrics"), ("StatefulSet", "demo-rollout"), ("Job", "demo-trainer"),
    ])  # fmt: skip
    for obj in objs.values():
        labels = obj["metadata"]["labels"]
        assert obj["metadata"]["namespace"] == "team"
        assert labels["agpo.dev/job"] == "demo" and labels["agpo.dev/role"]
        assert {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
                "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"} <= set(labels)  # fmt: skip
        assert "ownerReferences" not in obj["metadata"]


def test_adopt_adds_the_controller_reference_without_touching_the_original() -> None:
    cm = children(job())[("ConfigMap", "demo-spec")]
    owned = adopt(cm, "demo", "uid-1")
    assert owned["metadata"]["ownerReferences"] == [{
        "apiVersion": "agpo.dev/v1alpha1", "kind": "AGPOJob", "name": "demo", "uid": "uid-1",
        "controller": True, "blockOwnerDeletion": True,
    }]  # fmt: skip
    assert "ownerReferences" not in cm["metadata"]


def test_configmap_holds_the_job_with_its_preset_expanded() -> None:
    import yaml

    j = job()
    text = children(j)[("ConfigMap", "demo-spec")]["data"]["job.yaml"]
    doc = yaml.safe_load(text)
    assert doc["metadata"] == {"name": "demo", "namespace": "team"}
    assert doc["spec"] == j.spec.to_dict()
    assert doc["spec"]["algorithm"]["clip"] == {"low": 0.2, "high": 0.28}  # defaults resolved
    assert parse_job(doc).spec == j.spec


def test_rollout_runs_the_vllm_server_contract() -> None:
    objs = children(job("qwen-math-gpu", name="qm"), "ml-training")
    sts = objs[("StatefulSet", "qm-rollout")]
    assert sts["spec"]["serviceName"] == "qm-rollout" and sts["spec"]["replicas"] == 2
    assert sts["spec"]["selector"]["matchLabels"] == {
        "agpo.dev/job": "qm",
        "agpo.dev/role": "rollout",
    }
    c = rollout_container(objs, "qm")
    assert c["command"] == [
        "python", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/models/Qwen2.5-Math-1.5B", "--host", "0.0.0.0", "--port", "8000",
        "--dtype", "bfloat16", "--max-model-len", "4096", "--gpu-memory-utilization", "0.85",
        # log-probs after temperature: what the trainer's importance ratio compares against
        "--logprobs-mode", "processed_logprobs", "--seed", "0",
        "--served-model-name", "Qwen/Qwen2.5-Math-1.5B",
        "--weight-transfer-config", '{"backend": "nccl"}',
        "--middleware", "agpo_rollout.auth.TokenAuthMiddleware",
    ]  # fmt: skip
    assert c["image"] == "ghcr.io/agpo-dev/agpo-rollout:0.1.0"  # the spec's image wins
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    e = env(c)
    assert e["VLLM_SERVER_DEV_MODE"] == "1" and e["AGPO_JOB_FILE"] == "/etc/agpo/job.yaml"
    assert e["AGPO_ROLLOUT_TOKEN"] == {"secretKeyRef": {"name": "qm-rollout-token", "key": "token"}}
    assert e["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    assert "VLLM_CPU_KVCACHE_SPACE" not in e and "--enforce-eager" not in c["command"]
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/dev/shm"]["name"] == "dshm" and mounts["/models"]["readOnly"] is True
    assert mounts["/etc/agpo"]["name"] == "job-spec"


def test_cpu_rollout_builds_the_tiny_model_and_runs_eager() -> None:
    objs = children(job())
    c = rollout_container(objs)
    assert c["image"] == "ghcr.io/agpo-dev/agpo-rollout:0.1.0-cpu"
    assert c["command"][c["command"].index("--model") + 1] == "/model"
    assert c["command"][c["command"].index("--served-model-name") + 1] == "builtin:tiny"
    assert "--enforce-eager" in c["command"]
    assert env(c)["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    pod = objs[("StatefulSet", "demo-rollout")]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["python", "-m", "agpo_trainer.models.tiny", "/model"]
    assert init["image"] == c["image"]
    assert {"name": "model", "emptyDir": {}} in pod["volumes"]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"name": "org/m", "source": {"path": "/weights/m"}}, "/weights/m"),
        ({"name": "org/m", "source": {"pvc": "w"}}, "/models"),
        ({"name": "org/m", "revision": "v2"}, "org/m"),
    ],
)
def test_model_location(model: dict[str, Any], expected: str) -> None:
    objs = children(job(model=model))
    cmd = rollout_container(objs)["command"]
    assert cmd[cmd.index("--model") + 1] == expected
    assert env(trainer_pod(objs)["containers"][0])["AGPO_MODEL_PATH"] == expected
    assert ("--revision" in cmd) == ("revision" in model)
    assert "initContainers" not in objs[("StatefulSet", "demo-rollout")]["spec"]["template"]["spec"]


def test_trainer_is_an_indexed_job_with_torchrun_rendezvous() -> None:
    objs = children(job("qwen-math-gpu", name="qm"), "ml-training")
    tj = objs[("Job", "qm-trainer")]
    assert tj["spec"]["completionMode"] == "Indexed"
    assert tj["spec"]["completions"] == tj["spec"]["parallelism"] == 2
    assert tj["spec"]["backoffLimit"] == 0
    assert tj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    pod = trainer_pod(objs, "qm")
    assert pod["subdomain"] == "qm-trainer" and pod["restartPolicy"] == "Never"
    c = pod["containers"][0]
    assert c["command"] == [
        "torchrun", "--nnodes=$(PET_NNODES)", "--nproc-per-node=$(PET_NPROC_PER_NODE)",
        "--node-rank=$(PET_NODE_RANK)", "--master-addr=$(PET_MASTER_ADDR)",
        "--master-port=$(PET_MASTER_PORT)", "-m", "agpo_trainer", "--job", "/etc/agpo/job.yaml",
    ]  # fmt: skip
    e = env(c)
    assert e["PET_NNODES"] == "2" and e["PET_NPROC_PER_NODE"] == "8"
    assert e["PET_NODE_RANK"] == {"fieldRef": {"fieldPath": FIELD_REF_INDEX}}
    assert e["MASTER_ADDR"] == e["PET_MASTER_ADDR"] == "qm-trainer-0.qm-trainer"
    assert e["MASTER_PORT"] == e["PET_MASTER_PORT"] == "29500"
    assert e["WORLD_SIZE"] == "16" and e["PYTHONUNBUFFERED"] == "1"
    # Every address of the vLLM pods' headless Service, resolved by the trainer at each step
    # boundary (no fixed list: the pool may be scaled while the trainer runs).
    assert e["AGPO_ROLLOUT_DISCOVERY"] == "dns://qm-rollout.ml-training.svc:8000"
    assert objs[("Service", "qm-rollout")]["spec"]["clusterIP"] == "None"
    assert "AGPO_ROLLOUT_URLS" not in e
    assert e["AGPO_ROLLOUT_TOKEN"] == {"secretKeyRef": {"name": "qm-rollout-token", "key": "token"}}
    assert e["AGPO_CHECKPOINT_DIR"] == "/checkpoints/qwen-math-agpo"
    assert e["AGPO_WEIGHT_SYNC_HOST"] == "qm-trainer-0.qm-trainer.ml-training.svc"
    assert e["AGPO_WEIGHT_SYNC_PORT"] == "29600" and e["AGPO_METRICS_PORT"] == "9400"
    assert e["AGPO_DATASET_PATH"] == "/data/gsm8k/train.jsonl"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "metrics": 9400, "rendezvous": 29500, "weight-sync": 29600
    }  # fmt: skip
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert c["resources"]["requests"]["memory"] == "512Gi"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "qm-checkpoints"}
    claim = objs[("PersistentVolumeClaim", "qm-checkpoints")]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "200Gi"}}
    }  # fmt: skip
    assert claim["metadata"]["annotations"] == {"agpo.dev/reclaim": "Retain"}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": True}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
    svc = objs[("Service", "qm-trainer")]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True


def test_checkpoints_default_to_a_provisioned_claim_under_the_job_name() -> None:
    """Gap (a): without checkpoint settings the trainer used an emptyDir (lost with the pod)."""
    objs = children(job(training__checkpoint={}))
    pod = trainer_pod(objs)
    assert {
        "name": "checkpoints",
        "persistentVolumeClaim": {"claimName": "demo-checkpoints"},
    } in pod["volumes"]
    assert {"name": "checkpoints", "mountPath": "/checkpoints"} in pod["containers"][0][
        "volumeMounts"
    ]
    assert env(pod["containers"][0])["AGPO_CHECKPOINT_DIR"] == "/checkpoints/demo"
    claim = objs[("PersistentVolumeClaim", "demo-checkpoints")]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}
    }  # fmt: skip
    assert claim["metadata"]["annotations"] == {"agpo.dev/reclaim": "Delete"}
    # Created with the static children, so before any trainer Job.
    kinds = [k for k, _ in objs]
    assert kinds.index("PersistentVolumeClaim") < kinds.index("Job")


def test_checkpoint_storage_settings_and_the_existing_claim() -> None:
    storage = {"size": "50Gi", "storageClassName": "fast", "accessModes": ["ReadWriteOncePod"]}
    claim = children(job(training__checkpoint={"storage": storage}))[
        ("PersistentVolumeClaim", "demo-checkpoints")
    ]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOncePod"], "resources": {"requests": {"storage": "50Gi"}},
        "storageClassName": "fast",
    }  # fmt: skip
    two = children(job(trainer__nodes=2, training__checkpoint={}))
    assert two[("PersistentVolumeClaim", "demo-checkpoints")]["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]
    objs = children(job(training__checkpoint={"pvc": "mine"}))
    assert ("PersistentVolumeClaim", "demo-checkpoints") not in objs
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "mine"}} in trainer_pod(
        objs
    )["volumes"]


def test_emptydir_checkpoints_only_when_asked_for() -> None:
    objs = children(job(training__checkpoint={"storage": {"emptyDir": True}}))
    assert ("PersistentVolumeClaim", "demo-checkpoints") not in objs
    assert {"name": "checkpoints", "emptyDir": {}} in trainer_pod(objs)["volumes"]


def test_adopt_leaves_a_retained_claim_to_create_child() -> None:
    from agpo_operator.builders.storage import retained

    objs = children(job("qwen-math-gpu", name="qm"), namespace="ml-training")
    assert retained(objs[("PersistentVolumeClaim", "qm-checkpoints")])
    assert not retained(objs[("ConfigMap", "qm-spec")])


def test_attempt_label_marks_each_restart() -> None:
    tj = children(job(), attempt=3)[("Job", "demo-trainer")]
    assert tj["metadata"]["labels"]["agpo.dev/attempt"] == "3"
    assert tj["spec"]["template"]["metadata"]["labels"]["agpo.dev/attempt"] == "3"


def test_scheduling_and_pass_through_fields_reach_both_pod_templates() -> None:
    j = job(
        runPolicy={"schedulerName": "volcano", "priorityClassName": "high", "queueName": "q1"},
        imagePullSecrets=[{"name": "regcred"}],
        trainer={"gpusPerNode": 0, "procsPerNode": 2, "nodeSelector": {"pool": "train"},
                 "tolerations": [{"key": "t", "operator": "Exists", "effect": "NoSchedule"}],
                 "env": [{"name": "EXTRA", "value": "1"}, {"name": "MASTER_ADDR", "value": "evil"}],
                 "resources": {"requests": {"cpu": "4"}}},
        rollout={"gpusPerReplica": 0, "nodeSelector": {"pool": "serve"}, "weightSync": {"backend": "gloo"},
                 "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "4"},
                         {"name": "AGPO_ROLLOUT_TOKEN", "value": "guessable"}]},
    )  # fmt: skip
    objs = children(j)
    for pod, pool in (
        (trainer_pod(objs), "train"),
        (objs[("StatefulSet", "demo-rollout")]["spec"]["template"]["spec"], "serve"),
    ):
        assert pod["schedulerName"] == "volcano" and pod["priorityClassName"] == "high"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["nodeSelector"] == {"pool": pool}
    assert trainer_pod(objs)["tolerations"] == [
        {"key": "t", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert (
        objs[("StatefulSet", "demo-rollout")]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
        == "q1"
    )
    assert objs[("Job", "demo-trainer")]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q1"
    t_env = env(trainer_pod(objs)["containers"][0])
    assert t_env["EXTRA"] == "1" and t_env["MASTER_ADDR"] == "demo-trainer-0.demo-trainer"
    assert trainer_pod(objs)["containers"][0]["resources"] == {"requests": {"cpu": "4"}}
    r_env = env(rollout_container(objs))
    assert r_env["VLLM_CPU_KVCACHE_SPACE"] == "4"  # a tuning knob the job may override
    assert r_env["AGPO_ROLLOUT_TOKEN"] == {
        "secretKeyRef": {"name": "demo-rollout-token", "key": "token"}
    }


def test_images_default_to_the_operator_configuration() -> None:
    objs = children(job(trainer={"image": None, "gpusPerNode": 0, "procsPerNode": 2},
                        rollout={"gpusPerReplica": 0, "weightSync": {"backend": "gloo"}}))  # fmt: skip
    assert trainer_pod(objs)["containers"][0]["image"] == "trainer:default"
    assert rollout_container(objs)["image"] == "rollout:default"
    assert "imagePullPolicy" not in rollout_container(objs)


def test_pods_are_hardened_and_use_the_workload_account() -> None:
    objs = children(job())
    for pod in (
        trainer_pod(objs),
        objs[("StatefulSet", "demo-rollout")]["spec"]["template"]["spec"],
    ):
        assert pod["serviceAccountName"] == "demo-workload"
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 1000
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {
                "drop": ["ALL"]
            }
    sa = objs[("ServiceAccount", "demo-workload")]
    assert sa["automountServiceAccountToken"] is False


def test_secret_carries_the_token_only_when_given() -> None:
    j = job()
    assert "data" not in children(j)[("Secret", "demo-rollout-token")]
    objs = children(j, token="s3cret-token-value")
    import base64

    data = objs[("Secret", "demo-rollout-token")]["data"]["token"]
    assert base64.b64decode(data).decode() == "s3cret-token-value"
    others = [o for k, o in objs.items() if k[0] != "Secret"]
    assert "s3cret-token-value" not in json.dumps(others) and data not in json.dumps(others)


def test_metrics_service_and_pod_monitor_select_rank_zero() -> None:
    objs = children(job("qwen-math-gpu", name="qm"), "ml")
    rank0 = {
        "agpo.dev/job": "qm",
        "agpo.dev/role": "trainer",
        "batch.kubernetes.io/job-completion-index": "0",
    }
    svc = objs[("Service", "qm-trainer-metrics")]
    assert svc["spec"]["selector"] == rank0 and svc["spec"]["ports"][0]["port"] == 9400
    pm = objs[("PodMonitor", "qm-trainer-metrics")]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["spec"]["selector"]["matchLabels"] == rank0
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert ("PodMonitor", "demo-trainer-metrics") not in children(job())


def test_merge_env_lets_jobs_override_only_unreserved_variables() -> None:
    ours = [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    user = [{"name": "B", "value": "x"}, {"name": "A", "value": "y"}, {"name": "C", "value": "3"}]
    assert merge_env(ours, user, frozenset({"A"})) == [
        {"name": "A", "value": "1"}, {"name": "B", "value": "x"}, {"name": "C", "value": "3"}
    ]  # fmt: skip


def test_builders_do_not_import_kopf() -> None:
    import subprocess
    import sys

    code = "import sys, agpo_operator.render, agpo_operator.builders; print('kopf' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_evaluation_file_on_a_pvc_is_mounted_read_only_where_the_trainer_reads_it() -> None:
    from agpo_api.layout import EVAL_DATA_DIR

    source = {"file": {"pvc": "eval-sets", "subPath": "math/test.jsonl"}}
    objs = children(job(evaluation={"source": source}))
    pod = trainer_pod(objs)
    claim = {"claimName": "eval-sets", "readOnly": True}
    assert {"name": "eval-data", "persistentVolumeClaim": claim} in pod["volumes"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[EVAL_DATA_DIR] == {
        "name": "eval-data",
        "mountPath": EVAL_DATA_DIR,
        "readOnly": True,
    }
    # no evaluation file, no extra volume
    assert all(v["name"] != "eval-data" for v in trainer_pod(children(job()))["volumes"])


TRACKING = {
    "mlflow": {
        "trackingUri": "http://mlflow.mlflow:5000",
        "tokenSecretRef": {"name": "mlflow", "key": "token"},
    },
    "tensorboard": {},
    "wandb": {"project": "p", "apiKeySecretRef": {"name": "wandb", "key": "api-key"}},
}


def test_tracker_credentials_reach_the_trainer_only_through_secret_key_refs() -> None:
    j = job(tracking=TRACKING, trainer__env=[{"name": "WANDB_API_KEY", "value": "leak"}])
    objs = children(j)
    e = env(trainer_pod(objs)["containers"][0])
    assert e["MLFLOW_TRACKING_TOKEN"] == {"secretKeyRef": {"name": "mlflow", "key": "token"}}
    # reserved: a job's env cannot put a key in plain text where the Secret's should be
    assert e["WANDB_API_KEY"] == {"secretKeyRef": {"name": "wandb", "key": "api-key"}}
    [config] = [json.dumps(o) for (kind, _), o in objs.items() if kind == "ConfigMap"]
    assert "tokenSecretRef" in config and "apiKeySecretRef" in config  # names, never values
    assert "MLFLOW_TRACKING_TOKEN" not in env(rollout_container(objs))  # the trainer's only
    assert "WANDB_API_KEY" not in env(trainer_pod(children(job()))["containers"][0])


def test_network_policies_leave_the_trackers_egress_open() -> None:
    """The job's NetworkPolicies isolate ingress only: the trainer reaches a tracker (and the
    hub, DNS, the API server) without a rule per destination."""
    objs = children(job(tracking=TRACKING))
    policies = [o for (kind, _), o in objs.items() if kind == "NetworkPolicy"]
    assert policies and all(p["spec"]["policyTypes"] == ["Ingress"] for p in policies)
