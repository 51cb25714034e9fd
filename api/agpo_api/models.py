"""The AGPOJob API (``agpo.dev/v1alpha1``) as typed models: the one source of truth.

The CRD schema (:mod:`agpo_api.crd`), ``agpo validate``, the operator and the trainer
all use these models. Field names in YAML are the camelCase aliases; Python uses snake_case.
A minimal spec needs only ``model`` and ``dataset``; every default below is what a user gets.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from agpo_api.base import (
    CALLABLE_PATTERN,
    DNS1123_LABEL,
    ApiModel,
    DnsLabel,
    DnsSubdomain,
    Quantity,
    Rule,
    at_most_one,
    cel_count_set,
    exactly_one,
)
from agpo_api.vocabulary import Phase

GROUP = "agpo.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AGPOJob"
PLURAL = "agpojobs"
SINGULAR = "agpojob"
SHORT_NAMES = ("agpo",)
# Children are named "<job>-rollout", "<job>-trainer-metrics", ...; Service names must be
# DNS-1035 labels of at most 63 characters, so the job name leaves room for the suffixes.
MAX_JOB_NAME_LENGTH = 40

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Port = Annotated[int, Field(ge=1, le=65535)]


# --------------------------------------------------------------------------- shared parts
class SecretKeyRef(ApiModel):
    """A key of a Secret in the job's namespace; the value reaches pods only via secretKeyRef."""

    name: DnsSubdomain = Field(description="Secret name.")
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")] = Field(
        description="Key inside the Secret."
    )


class ResourceRequirements(ApiModel):
    """Container resources, as in a Pod spec (quantities such as ``500m`` or ``16Gi``)."""

    requests: dict[str, Quantity] | None = Field(default=None, description="Minimum resources.")
    limits: dict[str, Quantity] | None = Field(default=None, description="Maximum resources.")


class EnvVar(ApiModel):
    """An environment variable: a literal ``value`` or a ``valueFrom`` source (as in a Pod)."""

    name: Annotated[
        str, Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    ]
    value: str | None = None
    value_from: dict[str, Any] | None = Field(
        default=None,
        description="A core/v1 EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, ...).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    rules = (
        Rule(
            "value",
            "!(has(self.value) && has(self.valueFrom))",
            "set either value or valueFrom, not both",
            at_most_one("value", "value_from"),
        ),
    )


class Toleration(ApiModel):
    """A Pod toleration (core/v1 Toleration)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace, by name."""

    name: DnsSubdomain


# --------------------------------------------------------------------------- model
class ModelSource(ApiModel):
    """Where the weights come from when not from ``name``: a PVC (+ subPath) or a local path."""

    pvc: DnsSubdomain | None = Field(
        default=None, description="PersistentVolumeClaim holding the model."
    )
    sub_path: str | None = Field(default=None, description="Directory inside the PVC.")
    path: str | None = Field(default=None, description="A directory on the node/pod filesystem.")

    rules = (
        Rule(
            "pvc",
            "has(self.pvc) != has(self.path)",
            "set exactly one of model.source.pvc or model.source.path",
            exactly_one("pvc", "path"),
        ),
        Rule(
            "subPath",
            "!has(self.subPath) || has(self.pvc)",
            "subPath is only meaningful with pvc; set pvc or remove subPath",
            lambda s: s.sub_path is None or s.pvc is not None,
        ),
    )


class ModelSpec(ApiModel):
    """The policy model to train."""

    name: Annotated[str, Field(min_length=1, max_length=512)] = Field(
        description="Hugging Face model id, a local directory, or builtin:tiny (a small "
        "Qwen2 built on the fly; no download)."
    )
    revision: str | None = Field(default=None, description="Model revision (branch, tag, commit).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="bfloat16", description="Parameter dtype for training and serving."
    )
    source: ModelSource | None = Field(default=None, description="Load the weights from here.")
    tokenizer: str | None = Field(
        default=None, description="Tokenizer id/path; default: the model's."
    )
    hf_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a Hugging Face token (HF_TOKEN)."
    )

    rules = (
        Rule(
            "name",
            "!self.name.startsWith('builtin:') || self.name == 'builtin:tiny'",
            "the only builtin model is builtin:tiny",
            lambda s: not s.name.startswith("builtin:") or s.name == "builtin:tiny",
        ),
    )


# --------------------------------------------------------------------------- dataset
class BuiltinSource(ApiModel):
    """A synthetic task generated in code with verifiable answers (no download)."""

    task: Literal["arithmetic"] = Field(
        default="arithmetic",
        description="arithmetic: multi-step integer expressions with single-digit results.",
    )
    size: PositiveInt = Field(default=2000, description="Number of generated problems.")
    operands: int = Field(
        default=2, ge=2, le=5, description="Numbers per expression (3+ = multi-step)."
    )
    seed: int = Field(default=0, description="Generator seed.")


class FileSource(ApiModel):
    """A JSONL or Parquet file, on a local path or in a PVC."""

    path: str | None = Field(default=None, description="File path (local or inside the pod).")
    pvc: DnsSubdomain | None = Field(default=None, description="PVC holding the file.")
    sub_path: str | None = Field(default=None, description="File path inside the PVC.")
    format: Literal["jsonl", "parquet"] = Field(default="jsonl", description="File format.")

    rules = (
        Rule(
            "path",
            "has(self.path) != has(self.pvc)",
            "set exactly one of dataset.source.file.path or dataset.source.file.pvc (+ subPath)",
            exactly_one("path", "pvc"),
        ),
        Rule(
            "subPath",
            "has(self.pvc) == has(self.subPath)",
            "a file on a PVC needs subPath (the file's path inside the PVC), and only then",
            lambda s: (s.pvc is None) == (s.sub_path is None),
        ),
    )


class HfSource(ApiModel):
    """A dataset loaded with ``datasets.load_dataset`` (a hub id or a local directory)."""

    name: Annotated[str, Field(min_length=1)] = Field(description="Dataset id or local path.")
    config: str | None = Field(default=None, description="Dataset configuration name.")
    split: str = Field(default="train", description="Split to train on.")


class DatasetSource(ApiModel):
    """Exactly one of builtin, file, hf."""

    builtin: BuiltinSource | None = None
    file: FileSource | None = None
    hf: HfSource | None = None

    rules = (
        Rule(
            "",
            f"{cel_count_set('builtin', 'file', 'hf')} == 1",
            "set exactly one dataset source: builtin, file or hf",
            exactly_one("builtin", "file", "hf"),
        ),
    )


class DatasetSpec(ApiModel):
    """The prompts and reference answers."""

    source: DatasetSource = Field(description="Where the rows come from (exactly one source).")
    prompt_field: str = Field(default="prompt", description="Row field holding the question.")
    answer_field: str = Field(
        default="answer", description="Row field holding the reference answer."
    )
    prompt_template: Annotated[str, Field(max_length=4096)] = Field(
        default="{prompt}",
        description="Python format string applied to each row; {prompt} is the question.",
    )
    system_prompt: Annotated[str, Field(max_length=16384)] | None = Field(
        default=None, description="System prompt (chat models)."
    )
    bad_rows: Literal["fail", "skip"] = Field(
        default="fail",
        description="A row with a missing field or an empty prompt: fail the job (naming the row) "
        "or skip it with a warning and a counter.",
    )

    rules = (
        Rule(
            "promptTemplate",
            "self.promptTemplate.contains('{prompt}')",
            "promptTemplate must contain {prompt}",
            lambda s: "{prompt}" in s.prompt_template,
        ),
    )


# --------------------------------------------------------------------------- algorithm
PresetName = Literal["agpo", "grpo", "dr_grpo", "dapo", "reinforce_rej", "gvpo"]
AdvantageName = Literal["grpo", "dr_grpo", "reinforce"]
ZeroVarianceName = Literal["agpo", "mask", "resample", "keep"]
PolicyLossName = Literal["clipped", "gvpo"]
LossAggregationName = Literal[
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"
]
LengthRewardName = Literal["none", "agpo", "kimi", "overlong"]

#: The named algorithms of the group-relative family: each expands to these fields (YAML
#: names) unless the spec sets them. docs/algorithm.md shows the same table with its papers.
PRESETS: dict[str, dict[str, Any]] = {
    # AGPO v1 (arXiv 2503.15952 v1) with the first author's ColossalAI config.
    "agpo": {
        "advantage": "grpo",
        "zeroVariance": "agpo",
        "policyLoss": "clipped",
        "lossAggregation": "token-mean",
        "clip": {"low": 0.2, "high": 0.28},
        "lengthReward": {"type": "agpo", "coefficient": 0.1},
        "klCoefficient": 0.0,
    },
    # GRPO (DeepSeekMath, arXiv 2402.03300): eps 0.2, KL beta 0.04, per-sequence token mean.
    "grpo": {
        "advantage": "grpo",
        "zeroVariance": "keep",
        "policyLoss": "clipped",
        "lossAggregation": "seq-mean-token-mean",
        "clip": {"low": 0.2, "high": 0.2},
        "lengthReward": {"type": "none", "coefficient": 0.0},
        "klCoefficient": 0.04,
    },
    # Dr. GRPO (arXiv 2503.20783): no std, constant-normalised token sum, no KL.
    "dr_grpo": {
        "advantage": "dr_grpo",
        "zeroVariance": "keep",
        "policyLoss": "clipped",
        "lossAggregation": "seq-mean-token-sum-norm",
        "clip": {"low": 0.2, "high": 0.2},
        "lengthReward": {"type": "none", "coefficient": 0.0},
        "klCoefficient": 0.0,
    },
    # DAPO (arXiv 2503.14476): clip-higher, dynamic sampling, token-level loss, soft overlong
    # punishment, no KL.
    "dapo": {
        "advantage": "grpo",
        "zeroVariance": "resample",
        "policyLoss": "clipped",
        "lossAggregation": "token-mean",
        "clip": {"low": 0.2, "high": 0.28},
        "lengthReward": {"type": "overlong", "coefficient": 1.0},
        "klCoefficient": 0.0,
    },
    # Reinforce-Rej (Xiong et al., arXiv 2504.11343): REINFORCE with the reward itself, clipped
    # token-level updates, all-correct and all-wrong prompts filtered out.
    "reinforce_rej": {
        "advantage": "reinforce",
        "zeroVariance": "mask",
        "policyLoss": "clipped",
        "lossAggregation": "token-mean",
        "clip": {"low": 0.2, "high": 0.2},
        "lengthReward": {"type": "none", "coefficient": 0.0},
        "klCoefficient": 0.0,
    },
    # GVPO (arXiv 2504.19599): centred rewards (no std), no clip, no KL, sequence sums.
    "gvpo": {
        "advantage": "dr_grpo",
        "zeroVariance": "keep",
        "policyLoss": "gvpo",
        "lossAggregation": "seq-mean-token-sum",
        "clip": {"low": 0.2, "high": 0.2},
        "lengthReward": {"type": "none", "coefficient": 0.0},
        "klCoefficient": 0.0,
    },
}
#: What ``preset`` is when unset: ``agpo`` for a spec that names no family field, else the
#: plain ``grpo`` base the fields it names modify (so ``advantage: grpo`` alone is plain GRPO).
DEFAULT_PRESET = "agpo"
PLAIN_PRESET = "grpo"
FAMILY_FIELDS = ("advantage", "zeroVariance", "policyLoss")
#: The coefficient a length reward gets when its type is set without one.
LENGTH_COEFFICIENTS = {"none": 0.0, "agpo": 0.1, "kimi": 1.0, "overlong": 1.0}
#: The clip range when a ClipSpec is built on its own (the agpo preset's).
DEFAULT_CLIP = {"low": 0.2, "high": 0.28}


def _python_name(alias: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in alias)


def _plain(value: Any) -> Any:
    """A nested model given in Python as its YAML mapping (unset fields left out)."""
    if isinstance(value, ApiModel):
        return value.model_dump(by_alias=True, exclude_none=True)
    return value


def _take(data: dict[str, Any], alias: str) -> Any:
    """Pop ``alias`` (or its snake_case name) from ``data``; None when absent."""
    value = data.pop(alias, None)
    snake = data.pop(_python_name(alias), None)
    return _plain(value if value is not None else snake)


def preset_of(data: dict[str, Any]) -> str:
    """The preset an (unresolved) algorithm mapping stands for (see :data:`DEFAULT_PRESET`)."""
    preset = data.get("preset")
    if isinstance(preset, str):
        return preset
    named = any(data.get(f) is not None or data.get(_python_name(f)) is not None
                for f in FAMILY_FIELDS)  # fmt: skip
    return PLAIN_PRESET if named else DEFAULT_PRESET


def resolve_algorithm(data: dict[str, Any]) -> dict[str, Any]:
    """Expand the preset into every field the spec leaves unset; explicit fields win.

    ``clip`` and ``lengthReward`` merge key by key (``clip: {high: 0.3}`` keeps the preset's
    ``low``); a ``lengthReward`` of another type than the preset's takes none of its values.
    ``correct.reward`` defaults to ``accuracy`` unless the rewards are custom functions only
    without ``accuracy`` (then the spec must say what a correct answer is).
    """
    out = dict(data)
    preset = preset_of(out)
    out.pop("preset", None)
    table = PRESETS.get(preset)
    out["preset"] = preset
    if table is None:
        return out  # the Literal check reports the unknown preset
    for alias in ("advantage", "zeroVariance", "policyLoss", "lossAggregation", "klCoefficient"):
        value = _take(out, alias)
        out[alias] = table[alias] if value is None else value
    clip = _take(out, "clip")
    out["clip"] = {**table["clip"], **clip} if isinstance(clip, dict) else (clip or table["clip"])
    length = _take(out, "lengthReward")
    if length is None:
        length = dict(table["lengthReward"])
    elif isinstance(length, dict):
        kind = length.get("type", table["lengthReward"]["type"])
        base = table["lengthReward"] if kind == table["lengthReward"]["type"] else {}
        length = {**base, **length, "type": kind}
        if "coefficient" not in length and isinstance(kind, str):
            length["coefficient"] = LENGTH_COEFFICIENTS.get(kind, 0.0)
    out["lengthReward"] = length
    correct = _take(out, "correct")
    rewards = out.get("rewards")
    if isinstance(correct, dict) or correct is None:
        correct = dict(correct or {})
        if correct.get("reward") is None and _accuracy_is_defined(rewards):
            correct["reward"] = "accuracy"
    out["correct"] = correct
    return out


def _accuracy_is_defined(rewards: Any) -> bool:
    """True unless custom functions are the only rewards and none of them is ``accuracy``."""
    if not isinstance(rewards, list):
        return True  # the default rewards: accuracy
    entries = [_plain(r) for r in rewards]
    names = [r.get("name") for r in entries if isinstance(r, dict)]
    custom = [r for r in entries if isinstance(r, dict) and r.get("function") is not None]
    return "accuracy" in names or not custom


def _cel_preset(s: str) -> str:
    """CEL for the preset of the (unresolved) algorithm object ``s``."""
    named = " || ".join(f"has({s}.{f})" for f in FAMILY_FIELDS)
    return f"(has({s}.preset) ? {s}.preset : (({named}) ? '{PLAIN_PRESET}' : '{DEFAULT_PRESET}'))"


def cel_effective(s: str, alias: str) -> str:
    """CEL for the resolved value of the string field ``alias`` of the algorithm object ``s``:
    the spec's own value, else the preset's."""
    preset = _cel_preset(s)
    expr = f"'{PRESETS[DEFAULT_PRESET][alias]}'"
    for name, table in reversed(list(PRESETS.items())):
        expr = f"({preset} == '{name}' ? '{table[alias]}' : {expr})"
    return f"(has({s}.{alias}) ? {s}.{alias} : {expr})"


class RewardBounds(ApiModel):
    """The attainable range of a custom reward function, ``[min, max]``."""

    min: float = Field(description="The lowest value the function returns.")
    max: float = Field(description="The highest value the function returns.")

    rules = (
        Rule(
            "max",
            "self.max >= self.min",
            "bounds.max must be >= bounds.min",
            lambda s: s.max >= s.min,
        ),
    )


class RewardSpec(ApiModel):
    """One reward term: a builtin reward by name, or a Python function ``module:callable``."""

    name: Literal["accuracy", "format"] | None = Field(
        default=None,
        description="Builtin reward: accuracy (math-verify, [0, 1]) or format ([0, 1]).",
    )
    function: Annotated[str, Field(pattern=CALLABLE_PATTERN, max_length=256)] | None = Field(
        default=None,
        description="Custom reward 'module:callable', called as fn(prompts, completions, answers) "
        "-> list[float].",
    )
    weight: float = Field(default=1.0, description="Weight in the summed reward.")
    bounds: RewardBounds | None = Field(
        default=None,
        description="A custom function's attainable range; zeroVariance agpo needs it (it gives "
        "a homogeneous group +v at the maximum of the summed range and -v at its minimum).",
    )

    rules = (
        Rule(
            "name",
            # `function` is a CEL keyword; Kubernetes exposes such fields as __name__.
            "has(self.name) != has(self.__function__)",
            "set exactly one of name or function in each reward",
            exactly_one("name", "function"),
        ),
        Rule(
            "bounds",
            "!has(self.bounds) || has(self.__function__)",
            "bounds are for custom functions; builtin rewards have theirs (accuracy and format: "
            "[0, 1]); remove bounds",
            lambda s: s.bounds is None or s.function is not None,
        ),
    )


class CorrectSpec(ApiModel):
    """What counts as a correct answer (for the length rewards and the accuracy metric)."""

    reward: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None,
        description="The reward that decides it: accuracy, or the name or function of one of "
        "algorithm.rewards; default accuracy (required when the rewards are custom functions "
        "only).",
    )
    threshold: float = Field(
        default=0.5, description="A completion is correct when that reward is above this."
    )


class LengthRewardSpec(ApiModel):
    """Length shaping: AGPO's reward for short correct answers, Kimi k1.5's, or DAPO's penalty."""

    type: LengthRewardName | None = Field(
        default=None,
        description="agpo: coef*(1-(L-Lmin)/(Lmax-Lmin)) for correct answers in mixed groups; "
        "kimi: Kimi k1.5 length penalty; overlong: DAPO soft overlong penalty; none: off. "
        "Default: the preset's.",
    )
    coefficient: float | None = Field(
        default=None,
        ge=0,
        description="Scale of the length term; default the preset's, or for another type "
        "agpo 0.1, kimi 1, overlong 1.",
    )
    max_tokens: PositiveInt | None = Field(
        default=None,
        description="overlong: hard limit L_max; default training.maxCompletionTokens.",
    )
    buffer_tokens: PositiveInt | None = Field(
        default=None,
        description="overlong: the penalty ramps over the last bufferTokens tokens; default a "
        "fifth of maxTokens (DAPO: 4096 of 20480).",
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            kind = data.setdefault("type", "none")
            if data.get("coefficient") is None and isinstance(kind, str):
                data["coefficient"] = LENGTH_COEFFICIENTS.get(kind, 0.0)
        return data

    rules = (
        Rule(
            "bufferTokens",
            "!has(self.bufferTokens) || !has(self.maxTokens) || self.bufferTokens < self.maxTokens",
            "bufferTokens must be smaller than maxTokens",
            lambda s: (
                s.buffer_tokens is None or s.max_tokens is None or s.buffer_tokens < s.max_tokens
            ),
        ),
    )


class ClipSpec(ApiModel):
    """PPO ratio clip range [1 - low, 1 + high] (DAPO's clip-higher when high > low)."""

    low: float | None = Field(
        default=None, gt=0, lt=1, description="Lower clip epsilon; default the preset's."
    )
    high: float | None = Field(
        default=None, gt=0, description="Upper clip epsilon; default the preset's."
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {**DEFAULT_CLIP, **{k: v for k, v in data.items() if v is not None}}
        return data

    rules = (
        Rule(
            "high",
            "!has(self.low) || !has(self.high) || self.high >= self.low",
            "clip.high must be >= clip.low; raise clip.high or lower clip.low",
            lambda s: s.low is None or s.high is None or s.high >= s.low,
        ),
    )


def _default_rewards() -> list[RewardSpec]:
    return [RewardSpec(name="accuracy", weight=1.0)]


_S = "self"
_ZV = cel_effective(_S, "zeroVariance")
_LOSS = cel_effective(_S, "policyLoss")
_AGG = cel_effective(_S, "lossAggregation")


class AlgorithmSpec(ApiModel):
    """The RL objective: a named preset, or its fields one by one (each overrides the preset).

    One knob per concept: ``advantage`` normalises groups with reward variance,
    ``zeroVariance`` alone decides groups without, ``policyLoss`` is the loss, and
    ``lossAggregation`` how token losses are averaged. ``agpo validate`` and ``agpo render``
    show the resolved fields.
    """

    preset: PresetName | None = Field(
        default=None,
        description="agpo | grpo | dr_grpo | dapo | reinforce_rej | gvpo: expands to advantage, "
        "zeroVariance, policyLoss, lossAggregation, clip, lengthReward and klCoefficient "
        "(docs/algorithm.md); fields set here override it. Unset: agpo, or grpo when one of "
        "advantage, zeroVariance, policyLoss is set.",
    )
    advantage: AdvantageName | None = Field(
        default=None,
        description="Groups with reward variance: grpo (r-mean)/(std+eps); dr_grpo r-mean; "
        "reinforce r. Default: the preset's.",
    )
    zero_variance: ZeroVarianceName | None = Field(
        default=None,
        description="Groups whose rewards are all equal: agpo: +-zeroVarianceAdvantage at the "
        "top/bottom of the reward range; mask: left out of the loss; resample: draw more prompts "
        "(DAPO); keep: advantage 0. Default: the preset's.",
    )
    policy_loss: PolicyLossName | None = Field(
        default=None,
        description="clipped: token-level clipped surrogate (PPO/DAPO clip); gvpo: GVPO "
        "(arXiv 2504.19599; no ratio, no clip). Default: the preset's.",
    )
    gvpo_beta: float = Field(
        default=0.1, gt=0, description="policyLoss gvpo: beta of GVPO's implied reward."
    )
    zero_variance_advantage: float = Field(
        default=1.0, gt=0, description="Magnitude of AGPO's advantage for zero-variance groups."
    )
    max_resample_rounds: PositiveInt = Field(
        default=4, description="zeroVariance resample: extra prompt batches drawn at most per step."
    )
    group_size: int = Field(default=8, ge=2, le=1024, description="Completions per prompt (G).")
    rewards: list[RewardSpec] = Field(
        default_factory=_default_rewards,
        min_length=1,
        max_length=16,
        description="Reward terms, summed with their weights.",
    )
    correct: CorrectSpec | None = Field(
        default=None,
        description="What counts as a correct answer (length rewards, accuracy metric); "
        "default: accuracy above 0.5.",
    )
    length_reward: LengthRewardSpec | None = Field(
        default=None, description="Length shaping; default: the preset's."
    )
    clip: ClipSpec | None = Field(
        default=None, description="Ratio clip range (policyLoss clipped); default the preset's."
    )
    kl_coefficient: float | None = Field(
        default=None,
        ge=0,
        description="k3 KL penalty to the initial policy; 0 = no reference model. Default: the "
        "preset's.",
    )
    loss_aggregation: LossAggregationName | None = Field(
        default=None,
        description="token-mean (DAPO, AGPO), seq-mean-token-mean (GRPO), seq-mean-token-sum "
        "(GVPO), seq-mean-token-sum-norm (Dr. GRPO). Default: the preset's.",
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        return resolve_algorithm(data) if isinstance(data, dict) else data

    rules = (
        Rule(
            "rewards",
            f"{_ZV} != 'agpo' || self.rewards.all(r, has(r.name) || has(r.bounds))",
            "zeroVariance agpo gives a homogeneous group +-zeroVarianceAdvantage at the top or "
            "bottom of the attainable reward range, which a custom function does not declare: "
            "add bounds: {min: ..., max: ...} to each rewards[] entry with a function, or choose "
            "zeroVariance mask, resample or keep",
            lambda s: (
                s.zero_variance != "agpo"
                or all(r.name is not None or r.bounds is not None for r in s.rewards)
            ),
        ),
        Rule(
            "correct.reward",
            "(has(self.correct) && has(self.correct.reward)) || "
            "self.rewards.all(r, has(r.name)) || "
            "self.rewards.exists(r, has(r.name) && r.name == 'accuracy')",
            "the rewards are custom functions only: say what a correct answer is with "
            "correct: {reward: <one of the rewards' function>, threshold: ...}, or "
            "correct: {reward: accuracy} for math answers",
            lambda s: s.correct is not None and s.correct.reward is not None,
        ),
        Rule(
            "correct.reward",
            "!has(self.correct) || !has(self.correct.reward) || "
            "self.correct.reward == 'accuracy' || self.rewards.exists(r, "
            "(has(r.name) && r.name == self.correct.reward) || "
            "(has(r.__function__) && r.__function__ == self.correct.reward))",
            "correct.reward must be accuracy or the name or function of one of algorithm.rewards",
            lambda s: (
                s.correct is None
                or s.correct.reward in (None, "accuracy")
                or any(s.correct.reward in (r.name, r.function) for r in s.rewards)
            ),
        ),
        Rule(
            "lossAggregation",
            f"{_LOSS} != 'gvpo' || {_AGG} == 'seq-mean-token-sum'",
            "policyLoss gvpo is written in per-sequence log-probability sums: set "
            "lossAggregation: seq-mean-token-sum (or leave it to preset: gvpo)",
            lambda s: s.policy_loss != "gvpo" or s.loss_aggregation == "seq-mean-token-sum",
        ),
    )


# --------------------------------------------------------------------------- training
AccessMode = Literal["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"]
#: What a provisioned checkpoint claim asks for when ``size`` is unset.
DEFAULT_CHECKPOINT_SIZE = "10Gi"


class CheckpointStorage(ApiModel):
    """Checkpoint storage the operator provisions: a PersistentVolumeClaim ``<job>-checkpoints``
    (the default, with every field unset), or an emptyDir when ``emptyDir`` is true."""

    empty_dir: bool = Field(
        default=False,
        description="Keep checkpoints in an emptyDir instead: they are lost whenever the trainer "
        "pod is replaced (restart, eviction, node loss), so a restart starts from step 0. The "
        "job gets the EphemeralCheckpoints condition and a Warning event.",
    )
    size: Quantity | None = Field(
        default=None, description=f"Requested claim size; default {DEFAULT_CHECKPOINT_SIZE}."
    )
    storage_class_name: DnsSubdomain | None = Field(
        default=None, description="StorageClass of the claim; default: the cluster's default."
    )
    access_modes: list[AccessMode] | None = Field(
        default=None,
        min_length=1,
        max_length=3,
        description="Access modes of the claim; default ReadWriteOnce with one trainer node, "
        "ReadWriteMany with more (every trainer pod mounts the checkpoints).",
    )
    reclaim: Literal["Delete", "Retain"] = Field(
        default="Delete",
        description="Delete: the job owns the claim (deleted with the job). Retain: the claim has "
        "no owner and outlives the job; a new job of the same name resumes from it; delete it "
        "by hand (kubectl delete pvc <job>-checkpoints).",
    )

    rules = (
        Rule(
            "emptyDir",
            "!self.emptyDir || !(has(self.size) || has(self.storageClassName) || "
            "has(self.accessModes))",
            "checkpoint.storage.emptyDir excludes size, storageClassName and accessModes (they "
            "describe a claim); remove them or set emptyDir to false",
            lambda s: (
                not s.empty_dir
                or (s.size is None and s.storage_class_name is None and s.access_modes is None)
            ),
        ),
    )

    def modes(self, nodes: int) -> list[str]:
        """The claim's access modes (the default depends on the number of trainer nodes)."""
        if self.access_modes is not None:
            return list(self.access_modes)
        return ["ReadWriteMany"] if nodes > 1 else ["ReadWriteOnce"]


class CheckpointSpec(ApiModel):
    """Checkpointing: Hugging Face weights + optimizer/scheduler/RNG/data cursor.

    Where they go: ``pvc`` (an existing claim), else ``storage`` -- by default a claim the
    operator provisions for the job, so a replaced trainer pod resumes from the newest one."""

    every_steps: PositiveInt = Field(default=50, description="Save every N steps (and at the end).")
    keep: PositiveInt = Field(default=3, description="Keep the newest N checkpoints.")
    pvc: DnsSubdomain | None = Field(
        default=None, description="An existing PVC to write checkpoints to (not provisioned)."
    )
    storage: CheckpointStorage | None = Field(
        default=None,
        description="Storage the operator provisions (without pvc): a claim <job>-checkpoints of "
        f"{DEFAULT_CHECKPOINT_SIZE} by default, or an emptyDir. agpo run uses its local workdir.",
    )
    path: str | None = Field(
        default=None, description="Directory for checkpoints (inside the PVC when pvc is set)."
    )

    rules = (
        Rule(
            "storage",
            "!(has(self.pvc) && has(self.storage))",
            "set either checkpoint.pvc (an existing claim) or checkpoint.storage (provisioned by "
            "the operator), not both",
            at_most_one("pvc", "storage"),
        ),
    )

    def provisioned(self) -> CheckpointStorage | None:
        """The storage the operator provisions: None for an existing ``pvc``."""
        if self.pvc is not None:
            return None
        return self.storage if self.storage is not None else CheckpointStorage()


class TrainingSpec(ApiModel):
    """Optimization and sampling settings."""

    steps: PositiveInt = Field(default=100, description="Optimizer steps.")
    prompts_per_step: PositiveInt = Field(default=8, description="Prompts per step (x groupSize).")
    learning_rate: float = Field(default=1e-6, gt=0, le=1, description="Peak learning rate.")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        default="constant", description="Schedule after warmup."
    )
    warmup_steps: NonNegativeInt = Field(default=0, description="Linear warmup steps.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    max_prompt_tokens: PositiveInt = Field(default=512, description="Longer prompts are skipped.")
    max_completion_tokens: PositiveInt = Field(default=1024, description="Generation limit.")
    temperature: float = Field(default=1.0, gt=0, le=2, description="Sampling temperature.")
    top_p: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Nucleus sampling; only 1 (no truncation): the trainer's log-probs are of "
        "the full distribution, so a truncated sampler would bias the importance ratio.",
    )
    mini_batches: PositiveInt = Field(
        default=1,
        description="Optimizer steps per rollout batch: the batch is split into this many "
        "mini-batches (verl ppo_mini_batch_size, TRL steps_per_generation); 1 = one step.",
    )
    epochs: PositiveInt = Field(
        default=1,
        description="Passes over the rollout batch (verl ppo_epochs, TRL num_iterations); each "
        "pass takes miniBatches optimizer steps. Old log-probs stay the rollout's.",
    )
    seed: int = Field(default=0, description="Seed for data order, sampling and init.")
    format_warmup_steps: NonNegativeInt = Field(
        default=0,
        description="Supervised steps before RL that teach a fresh model the builtin task's "
        "answer format (a digit, then end of text) with random answers, so that RL alone "
        "teaches the arithmetic; 0 = off. Only for dataset.source.builtin.",
    )
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints.")
    resume: bool = Field(default=True, description="Resume from the newest complete checkpoint.")

    rules = (
        Rule(
            "warmupSteps",
            "self.warmupSteps <= self.steps",
            "warmupSteps must not exceed steps",
            lambda s: s.warmup_steps <= s.steps,
        ),
        Rule(
            "topP",
            "self.topP == 1.0",
            "topP < 1 samples from a truncated distribution while the trainer's log-probs are "
            "of the full one, which biases the importance ratio; set topP: 1 (use temperature "
            "to sharpen sampling)",
            lambda s: s.top_p == 1.0,
        ),
    )


# --------------------------------------------------------------------------- pods
class TrainerSpec(ApiModel):
    """The torchrun training group: ``nodes`` pods x ``procsPerNode`` processes."""

    image: str | None = Field(default=None, description="Trainer image; default: the operator's.")
    nodes: PositiveInt = Field(default=1, description="Trainer pods (torchrun nnodes).")
    procs_per_node: PositiveInt = Field(
        default=1, description="Processes per pod (nproc_per_node)."
    )
    gpus_per_node: NonNegativeInt = Field(default=1, description="nvidia.com/gpu per pod; 0 = CPU.")
    strategy: Literal["ddp", "fsdp"] = Field(default="ddp", description="ddp or fsdp (FSDP2).")
    resources: ResourceRequirements | None = Field(default=None, description="Pod resources.")
    env: list[EnvVar] = Field(default_factory=list, max_length=128, description="Extra env.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)

    rules = (
        Rule(
            "procsPerNode",
            "self.gpusPerNode == 0 || self.procsPerNode <= self.gpusPerNode",
            "procsPerNode must not exceed gpusPerNode on GPU nodes (one process per GPU)",
            lambda s: s.gpus_per_node == 0 or s.procs_per_node <= s.gpus_per_node,
        ),
    )


class WeightSyncSpec(ApiModel):
    """How new weights reach the vLLM servers."""

    backend: Literal["nccl", "gloo"] = Field(
        default="nccl", description="nccl on GPU; gloo (TCP broadcast) on CPU."
    )
    every_steps: PositiveInt = Field(default=1, description="Push weights every N steps.")
    port: Port = Field(default=29600, description="Trainer port the rollout workers join.")


class RolloutSpec(ApiModel):
    """vLLM rollout servers: ``replicas`` individually addressable OpenAI-compatible servers."""

    image: str | None = Field(default=None, description="vLLM image; default: the operator's.")
    replicas: PositiveInt = Field(default=1, description="vLLM servers; each receives weights.")
    gpus_per_replica: NonNegativeInt = Field(default=1, description="GPUs per server; 0 = CPU.")
    tensor_parallel_size: PositiveInt = Field(default=1, description="vLLM tensor parallelism.")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="vLLM memory share.")
    max_model_len: PositiveInt = Field(default=4096, description="vLLM context length.")
    resources: ResourceRequirements | None = Field(default=None, description="Pod resources.")
    extra_args: list[str] = Field(default_factory=list, max_length=64, description="vLLM flags.")
    env: list[EnvVar] = Field(default_factory=list, max_length=128, description="Extra env.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    weight_sync: WeightSyncSpec = Field(default_factory=WeightSyncSpec, description="Weight sync.")

    rules = (
        Rule(
            "tensorParallelSize",
            "self.gpusPerReplica == 0 ? self.tensorParallelSize == 1 : "
            "self.gpusPerReplica % self.tensorParallelSize == 0",
            "tensorParallelSize must divide gpusPerReplica (and be 1 on CPU)",
            lambda s: (
                s.tensor_parallel_size == 1
                if s.gpus_per_replica == 0
                else s.gpus_per_replica % s.tensor_parallel_size == 0
            ),
        ),
    )


#: Pods wait at most this long to run by default (an image pull or a scale-up takes minutes).
DEFAULT_STARTUP_TIMEOUT_SECONDS = 1800


class RunPolicy(ApiModel):
    """Restarts, deadlines, cleanup and scheduling (Kubeflow-style run policy)."""

    backoff_limit: NonNegativeInt = Field(
        default=3, description="Group restarts (from the newest checkpoint) before Failed."
    )
    active_deadline_seconds: PositiveInt | None = Field(
        default=None, description="Fail with DeadlineExceeded after this many seconds running."
    )
    startup_timeout_seconds: PositiveInt | None = Field(
        default=DEFAULT_STARTUP_TIMEOUT_SECONDS,
        description="Fail with StartupTimeout (naming the waiting pod and its reason, e.g. "
        "ImagePullBackOff or Unschedulable) when the pods are not all running and ready this "
        "many seconds after the job was created, resumed or restarted; time a Kueue-suspended "
        "trainer Job waits for admission does not count. null: wait forever.",
    )
    progress_timeout_seconds: PositiveInt | None = Field(
        default=None,
        description="Restart the group from its newest checkpoint (ProgressTimeout, counted "
        "against backoffLimit) when a running trainer reports no new step in /status for this "
        "many seconds; make it longer than the slowest step plus a checkpoint. Unset: off.",
    )
    ttl_seconds_after_finished: NonNegativeInt | None = Field(
        default=None, description="Delete the finished job after this many seconds."
    )
    suspend: bool = Field(default=False, description="Tear down pods, keep checkpoints.")
    clean_pod_policy: Literal["All", "Running", "None"] = Field(
        default="Running", description="Pods deleted when the job finishes."
    )
    scheduler_name: DnsSubdomain | None = Field(default=None, description="Pod scheduler.")
    priority_class_name: DnsSubdomain | None = Field(default=None, description="PriorityClass.")
    queue_name: Annotated[str, Field(pattern=DNS1123_LABEL, max_length=63)] | None = Field(
        default=None, description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name)."
    )


class MetricsSpec(ApiModel):
    """Prometheus metrics of the trainer."""

    port: Port = Field(default=9400, description="Trainer metrics and /status port.")
    pod_monitor: bool = Field(
        default=False, description="Create a PodMonitor (Prometheus Operator)."
    )


class AGPOJobSpec(ApiModel):
    """One RL post-training run."""

    model: ModelSpec
    dataset: DatasetSpec
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, description="Pull secrets for every pod."
    )

    rules = (
        Rule(
            "training.maxCompletionTokens",
            "self.training.maxPromptTokens + self.training.maxCompletionTokens "
            "<= self.rollout.maxModelLen",
            "training.maxPromptTokens + training.maxCompletionTokens must not exceed "
            "rollout.maxModelLen; lower them or raise rollout.maxModelLen",
            lambda s: (
                s.training.max_prompt_tokens + s.training.max_completion_tokens
                <= s.rollout.max_model_len
            ),
        ),
        Rule(
            "training.promptsPerStep",
            "(self.training.promptsPerStep * self.algorithm.groupSize) "
            "% (self.trainer.nodes * self.trainer.procsPerNode) == 0",
            "training.promptsPerStep * algorithm.groupSize must be divisible by "
            "trainer.nodes * trainer.procsPerNode (every process gets the same share)",
            lambda s: (
                (s.training.prompts_per_step * s.algorithm.group_size)
                % (s.trainer.nodes * s.trainer.procs_per_node)
                == 0
            ),
        ),
        Rule(
            "training.miniBatches",
            "(self.training.promptsPerStep * self.algorithm.groupSize) % "
            "(self.trainer.nodes * self.trainer.procsPerNode * self.training.miniBatches) == 0",
            "training.promptsPerStep * algorithm.groupSize must be divisible by "
            "trainer.nodes * trainer.procsPerNode * training.miniBatches (every mini-batch of "
            "every process gets the same share); lower miniBatches or raise promptsPerStep",
            lambda s: (
                (s.training.prompts_per_step * s.algorithm.group_size)
                % (s.trainer.nodes * s.trainer.procs_per_node * s.training.mini_batches)
                == 0
            ),
        ),
        Rule(
            "algorithm.policyLoss",
            f"{cel_effective('self.algorithm', 'policyLoss')} != 'gvpo' || "
            "self.training.promptsPerStep % "
            "(self.trainer.nodes * self.trainer.procsPerNode * self.training.miniBatches) == 0",
            "policyLoss gvpo needs all responses of a prompt in the same gradient step: "
            "training.promptsPerStep must be divisible by trainer.nodes * trainer.procsPerNode "
            "* training.miniBatches (whole groups per process and mini-batch)",
            lambda s: (
                s.algorithm.policy_loss != "gvpo"
                or s.training.prompts_per_step
                % (s.trainer.nodes * s.trainer.procs_per_node * s.training.mini_batches)
                == 0
            ),
        ),
        Rule(
            "rollout.weightSync.backend",
            "self.rollout.weightSync.backend != 'nccl' || "
            "(self.trainer.gpusPerNode > 0 && self.rollout.gpusPerReplica > 0)",
            "weightSync.backend nccl needs GPUs on trainer and rollout pods; use gloo on CPU",
            lambda s: (
                s.rollout.weight_sync.backend != "nccl"
                or (s.trainer.gpus_per_node > 0 and s.rollout.gpus_per_replica > 0)
            ),
        ),
        Rule(
            "training.checkpoint.storage.accessModes",
            "self.trainer.nodes == 1 || !has(self.training.checkpoint.storage) || "
            "!has(self.training.checkpoint.storage.accessModes) || "
            "'ReadWriteMany' in self.training.checkpoint.storage.accessModes",
            "training.checkpoint.storage.accessModes must include ReadWriteMany when "
            "trainer.nodes > 1 (every trainer pod mounts the checkpoints, on different nodes); "
            "add ReadWriteMany, or leave accessModes unset to get it",
            lambda s: (
                s.trainer.nodes == 1
                or s.training.checkpoint.storage is None
                or s.training.checkpoint.storage.access_modes is None
                or "ReadWriteMany" in s.training.checkpoint.storage.access_modes
            ),
        ),
        Rule(
            "training.formatWarmupSteps",
            "self.training.formatWarmupSteps == 0 || has(self.dataset.source.builtin)",
            "training.formatWarmupSteps needs dataset.source.builtin (it teaches that task's "
            "answer format); set it to 0 for other datasets",
            lambda s: s.training.format_warmup_steps == 0 or s.dataset.source.builtin is not None,
        ),
        Rule(
            "algorithm.lengthReward.bufferTokens",
            "!has(self.algorithm.lengthReward) || !has(self.algorithm.lengthReward.type) || "
            "self.algorithm.lengthReward.type != 'overlong' || "
            "!has(self.algorithm.lengthReward.bufferTokens) || "
            "has(self.algorithm.lengthReward.maxTokens) || "
            "self.algorithm.lengthReward.bufferTokens < self.training.maxCompletionTokens",
            "lengthReward.bufferTokens must be smaller than training.maxCompletionTokens",
            lambda s: (
                s.algorithm.length_reward is None
                or s.algorithm.length_reward.type != "overlong"
                or s.algorithm.length_reward.buffer_tokens is None
                or s.algorithm.length_reward.max_tokens is not None
                or s.algorithm.length_reward.buffer_tokens < s.training.max_completion_tokens
            ),
        ),
    )


# --------------------------------------------------------------------------- status
class Condition(ApiModel):
    """A metav1.Condition."""

    type: Annotated[str, Field(max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[
        str, Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    ]
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: str
    observed_generation: NonNegativeInt | None = None


class AGPOJobStatus(ApiModel):
    """What the operator observed; written only by the operator."""

    # The enum of agpo_api.vocabulary (one list for all); not strict: YAML gives plain strings.
    phase: Annotated[Phase | None, Field(strict=False)] = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    step: int | None = None
    total_steps: int | None = None
    reward_mean: float | None = None
    completion_tokens_mean: float | None = None
    zero_variance_fraction: float | None = None
    policy_version: int | None = None
    restarts: int | None = None
    start_time: str | None = None
    # The times the run policy's timeouts count from (decisions read them from here, never
    # from the operator's memory, so they survive operator restarts).
    waiting_since: str | None = Field(
        default=None,
        description="Since when the pods are waiting to run (creation, resume or restart); "
        "unset while every pod runs. startupTimeoutSeconds counts from here.",
    )
    last_progress_time: str | None = Field(
        default=None,
        description="When the trainer last reported a new step (or started running); "
        "progressTimeoutSeconds counts from here.",
    )
    completion_time: str | None = None
    message: str | None = None


class ObjectMeta(ApiModel):
    """The subset of metav1.ObjectMeta that ``agpo validate`` checks; the rest passes through."""

    model_config = ConfigDict(**{**ApiModel.model_config, "extra": "allow"})

    name: Annotated[str, Field(pattern=DNS1123_LABEL, max_length=MAX_JOB_NAME_LENGTH)] | None = None
    namespace: DnsLabel | None = None
    generate_name: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class AGPOJob(ApiModel):
    """The whole resource, as in a YAML file."""

    api_version: Literal["agpo.dev/v1alpha1"]
    kind: Literal["AGPOJob"]
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: AGPOJobSpec
    status: AGPOJobStatus | None = None
