"""The ConfigMap ``<job>-spec``: the resolved job, mounted at /etc/agpo/job.yaml in every pod."""

from __future__ import annotations

import yaml

from agpo_api import API_VERSION, KIND, AGPOJob
from agpo_api.layout import (
    JOB_FILE_KEY,
)
from agpo_operator.builders.child import READ_BACK, Child, Creation, Grant, Kind
from agpo_operator.builders.common import (
    BuildOptions,
    Names,
    Obj,
    metadata,
)

# libyaml's emitter when present: the pure-Python one costs ~20 ms per job.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def expanded_job(job: AGPOJob, n: Names) -> Obj:
    """The job as the pods read it: validated, its preset expanded and defaults filled in (the
    trainer resolves it again: agpo_api.resolved), no status, no cluster metadata."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": n.job, "namespace": n.namespace},
        "spec": job.spec.to_dict(),
    }


def admitted(job: AGPOJob, gang_replicas: int | None) -> AGPOJob:
    """The job with the vLLM servers its gang was admitted with (the job itself for None)."""
    if gang_replicas is None or gang_replicas == job.spec.rollout.replicas:
        return job
    rollout = job.spec.rollout.model_copy(update={"replicas": gang_replicas})
    return job.model_copy(update={"spec": job.spec.model_copy(update={"rollout": rollout})})


def build_spec_configmap(job: AGPOJob, n: Names, options: BuildOptions, creation: Creation) -> Obj:
    """The job file the trainer and rollout images read (``AGPO_JOB_FILE``).

    Immutable: it records the spec the pods were built from; the operator compares later
    spec changes against it (immutable fields) and never rewrites it. A scaled gang job's
    ConfigMap, recreated after someone deleted it, still says how many servers its gang was
    admitted with: the operator reads that number back as the gang's minimum.
    """
    text = yaml.dump(
        expanded_job(admitted(job, creation.gang_replicas), n), Dumper=_DUMPER, sort_keys=False
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(n, n.spec_configmap, "config"),
        "immutable": True,
        "data": {JOB_FILE_KEY: text},
    }


SPEC_CONFIGMAP = Child(
    kind=Kind("v1", "ConfigMap", "configmaps"),
    build=build_spec_configmap,
    name=lambda n: n.spec_configmap,
    grants=(
        Grant(("create",), "the job file"),
        READ_BACK,
        Grant(("get",), "read back the running spec to refuse immutable changes"),
    ),
)
