"""The policy's weights in the pods: where they are, which volumes bring them, and what makes
them when no directory holds them yet.

A model is either loaded (a claim's directory, a path in the image, a hub id vLLM downloads)
or made inside the pods: ``builtin:tiny`` is built, and a GGUF file (a packaged builtin model
such as ``builtin:smollm2-135m-instruct``, or ``model.source.gguf``) is converted. In a rollout
pod an init container makes it into an emptyDir that vLLM serves; a trainer makes it into its
own model cache (``agpo_trainer.models``). Making it needs the code in the images: the tiny
model needs nothing more, a GGUF conversion needs the ``gguf`` extra, a packaged model also
its package (:func:`model_requirement` says which; the project's Dockerfiles install both).
"""

from __future__ import annotations

from agpo_api import AGPOJob
from agpo_api.catalog import MODELS
from agpo_api.layout import CONVERTED_MODEL_DIR, MODELS_DIR, TINY_MODEL, TINY_MODEL_DIR
from agpo_operator.builders.common import Obj

#: The emptyDir an init container makes the model into (mounted at TINY_MODEL_DIR).
MADE_VOLUME = "model"
#: The claim that holds the model (or its GGUF file), mounted at MODELS_DIR.
CLAIM_VOLUME = "model"
#: A GGUF file on a claim: the claim and the emptyDir are both in the rollout pod.
GGUF_CLAIM_VOLUME = "model-source"
#: On the pods of a job whose model the images must be able to make (model_requirement).
REQUIREMENT_ANNOTATION = "agpo.dev/model-requires"


def packaged(job: AGPOJob) -> bool:
    """A builtin model converted from a GGUF file inside a Python package (and no source)."""
    model = job.spec.model
    return model.source is None and model.name in MODELS and MODELS.traits(model.name).packaged


def gguf_in_pod(job: AGPOJob) -> str | None:
    """The file ``model.source.gguf`` names, as the pods see it (a claim is at MODELS_DIR)."""
    source = job.spec.model.source
    if source is None or source.gguf is None:
        return None
    return f"{MODELS_DIR}/{source.gguf.lstrip('/')}" if source.pvc else source.gguf


def model_maker(job: AGPOJob) -> list[str] | None:
    """The command that makes the model inside a pod (into the emptyDir at TINY_MODEL_DIR),
    or None when the pods load a directory or a hub id."""
    model, gguf = job.spec.model, gguf_in_pod(job)
    convert = ["python", "-m", "agpo_trainer.models.gguf", CONVERTED_MODEL_DIR]
    if gguf is not None:
        return [*convert, "--file", gguf]
    if packaged(job):
        return [*convert, "--builtin", model.name]
    if model.source is None and model.name == TINY_MODEL:
        return ["python", "-m", "agpo_trainer.models.tiny", TINY_MODEL_DIR]
    return None


def model_path(job: AGPOJob) -> str:
    """Where the policy's weights are inside rollout pods (or the hub id); also trainer pods'
    unless the trainer makes the model itself (:func:`trainer_makes_model`)."""
    model = job.spec.model
    if gguf_in_pod(job) is not None or packaged(job):
        return CONVERTED_MODEL_DIR
    if model.source is not None and model.source.pvc:
        sub = (model.source.sub_path or "").strip("/")
        return f"{MODELS_DIR}/{sub}" if sub else MODELS_DIR
    if model.source is not None and model.source.path:
        return model.source.path
    if model.name == TINY_MODEL:
        return TINY_MODEL_DIR
    return model.name


def trainer_makes_model(job: AGPOJob) -> bool:
    """A builtin model or a GGUF file: the trainer makes it into its model cache (one rank per
    node), so it gets no model path."""
    return model_maker(job) is not None


def downloads_model(job: AGPOJob) -> bool:
    """True when the weights come from the Hugging Face hub (vLLM downloads them)."""
    return job.spec.model.source is None and job.spec.model.name not in MODELS


def model_volumes(job: AGPOJob) -> tuple[list[Obj], list[Obj]]:
    """(volumes, mounts) that bring the model's PVC into a pod, if it lives on one."""
    source = job.spec.model.source
    if source is None or not source.pvc:
        return [], []
    name = GGUF_CLAIM_VOLUME if source.gguf is not None else CLAIM_VOLUME
    volume = {"name": name, "persistentVolumeClaim": {"claimName": source.pvc, "readOnly": True}}
    return [volume], [{"name": name, "mountPath": MODELS_DIR, "readOnly": True}]


def model_requirement(job: AGPOJob) -> str | None:
    """What the rollout and trainer images must carry for this job's model beyond the usual
    (None: nothing): ``agpo render`` prints it, the pods carry it as an annotation."""
    model = job.spec.model
    if packaged(job):
        traits = MODELS.traits(model.name)
        return (
            f"{model.name} is converted in the rollout and trainer pods from the package "
            f"{traits.package}: both images need {traits.pip_install()} (the project's images "
            "have it), or convert it once (python -m agpo_trainer.models.gguf DIR --builtin "
            f"{model.name}) onto a PVC and set model.source.pvc"
        )
    if gguf_in_pod(job) is not None:
        return (
            "model.source.gguf is converted in the rollout and trainer pods: both images need "
            "the gguf extra (pip install 'agpo[gguf]'; the project's images have it)"
        )
    return None


def pod_annotations(job: AGPOJob) -> Obj:
    """The pod template's annotations: :func:`model_requirement`, shown by ``kubectl
    describe`` next to a failed init container or trainer."""
    requirement = model_requirement(job)
    return {"annotations": {REQUIREMENT_ANNOTATION: requirement}} if requirement else {}
