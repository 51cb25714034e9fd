"""``agpo render``: the objects the operator would create for jobs, as multi-document YAML.

The same builders as the operator, with two deliberate differences (both written as a comment
at the top of each job's output):

* no ``ownerReferences`` -- they need the AGPOJob's uid, which exists only once the API server
  stored the job (the operator adds them at creation);
* the Secret ``<job>-rollout-token`` is printed without ``data``: the operator generates a
  random token when it creates the job's children, and a rendered manifest must not carry a
  real or a guessable token.

A job whose model is made inside the pods (a packaged builtin model, ``model.source.gguf``)
also gets a comment saying what the rollout and trainer images must carry for it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

import yaml

from agpo_api import AGPOJob
from agpo_operator.builders import BuildOptions, Obj, build_children
from agpo_operator.builders.model import model_requirement

DEFAULT_NAMESPACE = "default"

NOTE = """\
# AGPOJob {namespace}/{name}: the objects the agpo operator creates for it.
# Not shown: ownerReferences to the AGPOJob (added at creation; they need its uid) and the
# Secret's token (generated at creation; the Secret is shown without data).
"""


def render_objects(
    job: AGPOJob, namespace: str | None = None, options: BuildOptions | None = None
) -> list[Obj]:
    """The children of one job, exactly as the operator builds them (minus token and owner)."""
    ns = namespace or job.metadata.namespace or DEFAULT_NAMESPACE
    return build_children(job, ns, options or _options_from_env())


def render_yaml(
    jobs: Iterable[AGPOJob], namespace: str | None = None, options: BuildOptions | None = None
) -> str:
    """Multi-document YAML of every job's children, each job introduced by a comment."""
    options = options or _options_from_env()
    parts = []
    for job in jobs:
        ns = namespace or job.metadata.namespace or DEFAULT_NAMESPACE
        docs = yaml.dump_all(
            render_objects(job, ns, options), Dumper=_Dumper, sort_keys=False, width=100
        )
        note = NOTE.format(namespace=ns, name=job.metadata.name) + _requirement_note(job)
        parts.append(note + "---\n" + docs)
    return "---\n".join(parts)


def _requirement_note(job: AGPOJob) -> str:
    """What the images must carry for the job's model (a packaged builtin model, a GGUF file),
    as comment lines; "" when nothing beyond the usual."""
    requirement = model_requirement(job)
    if requirement is None:
        return ""
    return "".join(
        f"# {line}\n"
        for line in textwrap.wrap(f"Images: {requirement}.", 94, break_on_hyphens=False)
    )


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's job.yaml) as literal blocks, readable in a diff."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _options_from_env() -> BuildOptions:
    # The operator's defaults (images, namespaces) come from the same AGPO_* variables.
    from agpo_operator.config import Config

    return Config.from_env().build_options()
