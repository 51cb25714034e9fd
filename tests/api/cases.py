"""Bad specs shared by the model tests and the CRD-schema tests.

Each case: an id, a patch applied to a minimal valid spec (dotted path -> value, None deletes)
and the path the model reports. ``schema`` tells whether the CRD (OpenAPI + CEL) can express
the rule too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from agpo_testlib import MINIMAL

_DELETE = object()


@dataclass(frozen=True)
class BadCase:
    id: str
    patch: dict[str, Any]
    path: str
    schema: bool = True


def apply(patch: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``base`` (default: the minimal job) with dotted-path values set."""
    doc = copy.deepcopy(base if base is not None else MINIMAL)
    for dotted, value in patch.items():
        node = doc
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if value is _DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


CPU = {"spec.trainer.gpusPerNode": 0, "spec.rollout.gpusPerReplica": 0}

BAD_CASES: list[BadCase] = [
    BadCase("misspelled field", {"spec.algorithm.groupSzie": 4}, "spec.algorithm.groupSzie"),
    BadCase("negative groupSize", {"spec.algorithm.groupSize": -1}, "spec.algorithm.groupSize"),
    BadCase("groupSize 1", {"spec.algorithm.groupSize": 1}, "spec.algorithm.groupSize"),
    BadCase(
        "string learning rate", {"spec.training.learningRate": "1e-6"}, "spec.training.learningRate"
    ),
    BadCase(
        "clip high < low",
        {"spec.algorithm.clip": {"low": 0.3, "high": 0.1}},
        "spec.algorithm.clip.high",
    ),
    BadCase("unknown advantage", {"spec.algorithm.advantage": "ppo"}, "spec.algorithm.advantage"),
    BadCase("missing model", {"spec.model": _DELETE}, "spec.model"),
    BadCase("no dataset source", {"spec.dataset.source": {}}, "spec.dataset.source"),
    BadCase(
        "two dataset sources",
        {"spec.dataset.source": {"builtin": {}, "hf": {"name": "gsm8k"}}},
        "spec.dataset.source",
    ),
    BadCase(
        "file source without path or pvc",
        {"spec.dataset.source": {"file": {"format": "jsonl"}}},
        "spec.dataset.source.file.path",
    ),
    BadCase(
        "file on pvc without subPath",
        {"spec.dataset.source": {"file": {"pvc": "data"}}},
        "spec.dataset.source.file.subPath",
    ),
    BadCase(
        "two model sources",
        {"spec.model.source": {"pvc": "models", "path": "/m"}},
        "spec.model.source.pvc",
    ),
    BadCase(
        "reward with name and function",
        {"spec.algorithm.rewards": [{"name": "accuracy", "function": "m:f"}]},
        "spec.algorithm.rewards[0].name",
    ),
    BadCase(
        "reward function not module:callable",
        {"spec.algorithm.rewards": [{"function": "my_rewards.score"}]},
        "spec.algorithm.rewards[0].function",
    ),
    BadCase(
        "nccl pool larger than the trainer's block of sync ports",
        {"spec.rollout.weightSync.backend": "nccl", "spec.rollout.replicas": 65},
        "spec.rollout.replicas",
    ),
    BadCase(
        "nccl sync ports past 65535",
        {"spec.rollout.weightSync.backend": "nccl", "spec.rollout.weightSync.port": 65500},
        "spec.rollout.replicas",
    ),
    BadCase(
        "tensorParallelSize does not divide gpusPerReplica",
        {"spec.rollout.gpusPerReplica": 4, "spec.rollout.tensorParallelSize": 3},
        "spec.rollout.tensorParallelSize",
    ),
    BadCase(
        "prompts*group not divisible by world size",
        {
            "spec.training.promptsPerStep": 3,
            "spec.algorithm.groupSize": 3,
            "spec.trainer.nodes": 2,
            "spec.trainer.procsPerNode": 1,
            "spec.trainer.gpusPerNode": 1,
        },
        "spec.training.promptsPerStep",
    ),
    BadCase(
        "prompt + completion tokens exceed maxModelLen",
        {
            "spec.training.maxPromptTokens": 2048,
            "spec.training.maxCompletionTokens": 4096,
            "spec.rollout.maxModelLen": 4096,
        },
        "spec.training.maxCompletionTokens",
    ),
    BadCase("nccl on CPU", CPU, "spec.rollout.weightSync.backend"),
    BadCase(
        "quantity does not parse",
        {"spec.trainer.resources": {"limits": {"memory": "4 GB"}}},
        "spec.trainer.resources.limits.memory",
    ),
    BadCase(
        "secret name not DNS-1123",
        {"spec.model.hfTokenSecretRef": {"name": "HF_Token", "key": "token"}},
        "spec.model.hfTokenSecretRef.name",
    ),
    BadCase(
        "queueName not a label",
        {"spec.runPolicy.queueName": "GPU queue"},
        "spec.runPolicy.queueName",
    ),
    BadCase(
        "gang kueue without a queue",
        {"spec.runPolicy.gang": {"mode": "kueue"}},
        "spec.runPolicy.gang.mode",
    ),
    BadCase(
        "gang kueue with coscheduling's timeout",
        {
            "spec.runPolicy.queueName": "gpu",
            "spec.runPolicy.gang": {"mode": "kueue", "scheduleTimeoutSeconds": 60},
        },
        "spec.runPolicy.gang.scheduleTimeoutSeconds",
    ),
    BadCase(
        "advantage agpo (removed: preset agpo)",
        {"spec.algorithm.advantage": "agpo"},
        "spec.algorithm.advantage",
        schema=True,
    ),
    BadCase("unknown preset", {"spec.algorithm.preset": "ppo"}, "spec.algorithm.preset"),
    BadCase(
        "custom reward without bounds under zeroVariance agpo",
        {
            "spec.algorithm.rewards": [{"function": "my_rewards:score"}],
            "spec.algorithm.correct": {"reward": "my_rewards:score"},
        },
        "spec.algorithm.rewards",
    ),
    BadCase(
        "custom reward only and no correct",
        {
            "spec.algorithm.rewards": [
                {"function": "my_rewards:score", "bounds": {"min": -1.0, "max": 1.0}}
            ]
        },
        "spec.algorithm.correct.reward",
    ),
    BadCase(
        "correct names no reward",
        {"spec.algorithm.correct": {"reward": "format"}},
        "spec.algorithm.correct.reward",
    ),
    BadCase(
        "bounds on a builtin reward",
        {"spec.algorithm.rewards": [{"name": "accuracy", "bounds": {"min": 0.0, "max": 2.0}}]},
        "spec.algorithm.rewards[0].bounds",
    ),
    BadCase(
        "bounds max below min",
        {
            "spec.algorithm.rewards": [
                {"function": "m:f", "bounds": {"min": 1.0, "max": -1.0}},
            ],
            "spec.algorithm.correct": {"reward": "m:f"},
        },
        "spec.algorithm.rewards[0].bounds.max",
    ),
    BadCase(
        "gvpo with token-mean",
        {"spec.algorithm.preset": "gvpo", "spec.algorithm.lossAggregation": "token-mean"},
        "spec.algorithm.lossAggregation",
    ),
    BadCase(
        "rollout correction under gvpo (no ratio)",
        {"spec.algorithm.preset": "gvpo", "spec.algorithm.rolloutCorrection": {"mode": "tis"}},
        "spec.algorithm.rolloutCorrection",
    ),
    BadCase(
        "mis bounds reversed",
        {"spec.algorithm.rolloutCorrection": {"mode": "mis", "lower": 2.0, "upper": 0.5}},
        "spec.algorithm.rolloutCorrection.upper",
    ),
    BadCase(
        "tis cap below 1",
        {"spec.algorithm.rolloutCorrection": {"mode": "tis", "cap": 0.5}},
        "spec.algorithm.rolloutCorrection.cap",
    ),
    BadCase(
        "gvpo splitting groups across processes",
        {
            "spec.algorithm.policyLoss": "gvpo",
            "spec.algorithm.lossAggregation": "seq-mean-token-sum",
            "spec.training.promptsPerStep": 3,
            "spec.algorithm.groupSize": 4,
            "spec.trainer.nodes": 2,
            "spec.trainer.procsPerNode": 1,
            "spec.trainer.gpusPerNode": 1,
        },
        "spec.algorithm.policyLoss",
    ),
    BadCase(
        "miniBatches do not divide the batch",
        {
            "spec.training.promptsPerStep": 3,
            "spec.algorithm.groupSize": 3,
            "spec.training.miniBatches": 2,
        },
        "spec.training.miniBatches",
    ),
    BadCase("miniBatches 0", {"spec.training.miniBatches": 0}, "spec.training.miniBatches"),
    BadCase("topP below 1", {"spec.training.topP": 0.9}, "spec.training.topP"),
    BadCase(
        "bufferTokens >= maxTokens",
        {
            "spec.algorithm.lengthReward": {
                "type": "overlong",
                "maxTokens": 512,
                "bufferTokens": 512,
            }
        },
        "spec.algorithm.lengthReward.bufferTokens",
    ),
    BadCase(
        "more processes than GPUs",
        {"spec.trainer.procsPerNode": 4, "spec.trainer.gpusPerNode": 2},
        "spec.trainer.procsPerNode",
    ),
    BadCase(
        "model subPath without pvc",
        {"spec.model.source": {"path": "/m", "subPath": "x"}},
        "spec.model.source.subPath",
    ),
    BadCase(
        "bufferTokens >= maxCompletionTokens",
        {
            "spec.algorithm.lengthReward": {"type": "overlong", "bufferTokens": 64},
            "spec.training.maxCompletionTokens": 64,
        },
        "spec.algorithm.lengthReward.bufferTokens",
    ),
    BadCase(
        "format warmup on a file dataset",
        {
            "spec.training.formatWarmupSteps": 10,
            "spec.dataset.source": {"file": {"path": "/data/train.jsonl"}},
        },
        "spec.training.formatWarmupSteps",
    ),
    BadCase(
        "two evaluation sources",
        {"spec.evaluation": {"source": {"split": "eval", "fraction": 0.1}}},
        "spec.evaluation.source",
    ),
    BadCase(
        "evaluation fraction above a half",
        {"spec.evaluation": {"source": {"fraction": 0.6}}},
        "spec.evaluation.source.fraction",
    ),
    BadCase(
        "evaluation source never used",
        {"spec.evaluation": {"atEnd": False, "source": {"fraction": 0.1}}},
        "spec.evaluation.atEnd",
    ),
    BadCase(
        "eval split of a task without splits",
        {"spec.evaluation": {"source": {"split": "eval"}}},
        "spec.evaluation.source",
    ),
    BadCase(
        "evaluation without a source on a file dataset",
        {
            "spec.evaluation": {"everySteps": 5},
            "spec.dataset.source": {"file": {"path": "/data/train.jsonl"}},
        },
        "spec.evaluation.source",
    ),
    BadCase(
        "unknown builtin task",
        {"spec.dataset.source": {"builtin": {"task": "sudoku"}}},
        "spec.dataset.source.builtin.task",
    ),
    BadCase(
        "six operands",
        {"spec.dataset.source": {"builtin": {"operands": 6}}},
        "spec.dataset.source.builtin.operands",
    ),
    BadCase(
        "warmup longer than training",
        {"spec.training": {"steps": 5, "warmupSteps": 6}},
        "spec.training.warmupSteps",
    ),
    BadCase(
        "promptTemplate without {prompt}",
        {"spec.dataset.promptTemplate": "Q:"},
        "spec.dataset.promptTemplate",
    ),
    BadCase("temperature 0", {"spec.training.temperature": 0}, "spec.training.temperature"),
    BadCase("topP above 1", {"spec.training.topP": 1.5}, "spec.training.topP"),
    BadCase("unknown builtin model", {"spec.model.name": "builtin:tiny@3"}, "spec.model.name"),
    BadCase(
        "gguf and a directory path",
        {"spec.model.source": {"gguf": "/m/x.gguf", "path": "/m"}},
        "spec.model.source.pvc",
    ),
    BadCase(
        "gguf in a claim with subPath",
        {"spec.model.source": {"pvc": "models", "subPath": "m", "gguf": "x.gguf"}},
        "spec.model.source.gguf",
    ),
    BadCase("bad dtype", {"spec.model.dtype": "fp8"}, "spec.model.dtype"),
    BadCase(
        "negative backoffLimit", {"spec.runPolicy.backoffLimit": -1}, "spec.runPolicy.backoffLimit"
    ),
    BadCase("metrics port out of range", {"spec.metrics.port": 70000}, "spec.metrics.port"),
    BadCase(
        "cleanPodPolicy lowercase",
        {"spec.runPolicy.cleanPodPolicy": "all"},
        "spec.runPolicy.cleanPodPolicy",
    ),
    BadCase("job name too long", {"metadata.name": "a" * 41}, "metadata.name"),
    BadCase(
        "checkpoint pvc and storage",
        {"spec.training.checkpoint": {"pvc": "c", "storage": {"size": "1Gi"}}},
        "spec.training.checkpoint.storage",
    ),
    BadCase(
        "emptyDir checkpoints with a size",
        {"spec.training.checkpoint": {"storage": {"emptyDir": True, "size": "1Gi"}}},
        "spec.training.checkpoint.storage.emptyDir",
    ),
    BadCase(
        "two trainer nodes on ReadWriteOnce checkpoints",
        {
            "spec.trainer.nodes": 2,
            "spec.training.checkpoint": {"storage": {"accessModes": ["ReadWriteOnce"]}},
        },
        "spec.training.checkpoint.storage.accessModes",
    ),
    BadCase(
        "unknown checkpoint access mode",
        {"spec.training.checkpoint": {"storage": {"accessModes": ["ReadOnlyMany"]}}},
        "spec.training.checkpoint.storage.accessModes[0]",
    ),
    BadCase(
        "startup timeout 0",
        {"spec.runPolicy.startupTimeoutSeconds": 0},
        "spec.runPolicy.startupTimeoutSeconds",
    ),
    BadCase(
        "progress timeout negative",
        {"spec.runPolicy.progressTimeoutSeconds": -5},
        "spec.runPolicy.progressTimeoutSeconds",
    ),
    BadCase(
        "env with value and valueFrom",
        {
            "spec.trainer.env": [
                {"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}
            ]
        },
        "spec.trainer.env[0].value",
    ),
]
