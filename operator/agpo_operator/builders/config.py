"""The ConfigMap ``<job>-spec``: the resolved job, mounted at /etc/agpo/job.yaml in every pod."""

from __future__ import annotations

import yaml

from agpo_api import API_VERSION, KIND, AGPOJob
from agpo_api.layout import (
    JOB_FILE_KEY,
)
from agpo_operator.builders.child import Grant, Kind, created
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


def build_spec_configmap(job: AGPOJob, n: Names, options: BuildOptions) -> Obj:
    """The job file the trainer and rollout images read (``AGPO_JOB_FILE``).

    Immutable: it records the spec the pods were built from; the operator compares later
    spec changes against it (immutable fields) and never rewrites it.
    """
    text = yaml.dump(expanded_job(job, n), Dumper=_DUMPER, sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(n, n.spec_configmap, "config"),
        "immutable": True,
        "data": {JOB_FILE_KEY: text},
    }


SPEC_CONFIGMAP = created(
    Kind("v1", "ConfigMap", "configmaps"),
    build_spec_configmap,
    lambda n: n.spec_configmap,
    "the job file",
    Grant(("get",), "read back the running spec to refuse immutable changes"),
)
