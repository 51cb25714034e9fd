"""The named algorithms of the group-relative family and how a preset fills ``spec.algorithm``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from agpo_api.base import (
    ApiModel,
)
from agpo_api.catalog import (
    ADVANTAGES,
    LENGTH_REWARDS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    REWARDS,
    ZERO_VARIANCE,
)

# --------------------------------------------------------------------------- algorithm
PresetName = Literal["agpo", "grpo", "dr_grpo", "dapo", "reinforce_rej", "gvpo", "gspo", "cispo"]
# The names of registered parts: checked against their catalog (agpo_api.catalog), which the
# trainer's registries extend; the CRD gets the shipped names as an enum.
AdvantageName = Annotated[str, ADVANTAGES.validator(), ADVANTAGES.json_schema()]
ZeroVarianceName = Annotated[str, ZERO_VARIANCE.validator(), ZERO_VARIANCE.json_schema()]
PolicyLossName = Annotated[str, POLICY_LOSSES.validator(), POLICY_LOSSES.json_schema()]
LossAggregationName = Annotated[str, LOSS_AGGREGATIONS.validator(), LOSS_AGGREGATIONS.json_schema()]
LengthRewardName = Annotated[str, LENGTH_REWARDS.validator(), LENGTH_REWARDS.json_schema()]
RewardName = Annotated[str, REWARDS.validator(), REWARDS.json_schema()]

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
    # GSPO (Qwen3, arXiv 2507.18071): the length-normalised sequence ratio, clipped per
    # sequence with the paper's range (3e-4 / 4e-4: a sequence ratio moves far less than a
    # token's), per-sequence mean, no KL.
    "gspo": {
        "advantage": "grpo",
        "zeroVariance": "keep",
        "policyLoss": "gspo",
        "lossAggregation": "seq-mean-token-mean",
        "clip": {"low": 0.0003, "high": 0.0004},
        "lengthReward": {"type": "none", "coefficient": 0.0},
        "klCoefficient": 0.0,
    },
    # CISPO (MiniMax-M1, arXiv 2506.13585): REINFORCE weighted by the clipped, stop-gradient
    # ratio on every token; the paper bounds the weight only from above (low 1: no lower
    # bound) and prints no upper epsilon: 0.28, Trinity-RFT's and DAPO's clip-higher. Token
    # mean, no KL.
    "cispo": {
        "advantage": "grpo",
        "zeroVariance": "keep",
        "policyLoss": "cispo",
        "lossAggregation": "token-mean",
        "clip": {"low": 1.0, "high": 0.28},
        "lengthReward": {"type": "none", "coefficient": 0.0},
        "klCoefficient": 0.0,
    },
}
#: What ``preset`` is when unset: ``agpo`` for a spec that names no family field, else the
#: plain ``grpo`` base the fields it names modify (so ``advantage: grpo`` alone is plain GRPO).
DEFAULT_PRESET = "agpo"
PLAIN_PRESET = "grpo"
FAMILY_FIELDS = ("advantage", "zeroVariance", "policyLoss")


def default_coefficient(kind: str) -> float:
    """The coefficient a length reward of type ``kind`` gets when the spec sets none (0 for an
    unknown type: the type's own check reports it)."""
    return LENGTH_REWARDS.traits(kind).coefficient if kind in LENGTH_REWARDS else 0.0


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
            length["coefficient"] = default_coefficient(kind)
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
