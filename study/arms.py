"""The study's arms and budgets as AGPOJob manifests (the same objects `agpo run` takes).

Every arm is the ``agpo`` preset's base (grpo advantages, clipped loss 0.2/0.28, token-mean,
no KL: the gate's GRPO run) with the two AGPO ingredients set explicitly, so arms differ only
in ``zeroVariance`` and ``lengthReward``:

| arm | zeroVariance | lengthReward |
| --- | --- | --- |
| grpo | keep | none |
| agpo | agpo (+-1) | none |
| mask | mask | none |
| resample | resample (DAPO dynamic sampling, maxResampleRounds rounds) | none |
| agpo-len | agpo (+-1) | agpo, coefficient 0.1 (the paper's AGPO) |
| grpo-len | keep | agpo, coefficient 0.1 |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NONE_LENGTH = {"type": "none", "coefficient": 0.0}
AGPO_LENGTH = {"type": "agpo", "coefficient": 0.1}

#: arm -> (zeroVariance, lengthReward)
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "grpo": ("keep", NONE_LENGTH),
    "agpo": ("agpo", NONE_LENGTH),
    "mask": ("mask", NONE_LENGTH),
    "resample": ("resample", NONE_LENGTH),
    "agpo-len": ("agpo", AGPO_LENGTH),
    "grpo-len": ("keep", AGPO_LENGTH),
}


@dataclass(frozen=True)
class Budget:
    """One study configuration (``full`` is ``make study``, ``smoke`` is CI's)."""

    steps: int = 80  # RL steps of the fixed-cost arms; budget = steps x prompts x group
    prompts: int = 16  # prompts per step
    group: int = 8  # G
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = tuple(ARMS)
    warmup_steps: int = 200  # training.formatWarmupSteps: the trainer's bitcount warm-up
    lr: float = 1e-4  # tuned on the gate's GRPO run only, frozen for every arm
    max_resample_rounds: int = 2  # resample: at most 3x the completions of a step
    max_tokens: int = 64  # maxCompletionTokens (longest grammatical completion: 51)
    eval_every: int = 10  # periodic greedy eval on the eval split (Evaluator)
    eval_prompts: int = 130  # 10 per bit count (2-8 bits hold what the split has)
    test_greedy_per_bits: int = 100  # greedy test set: stratified("test", 100)
    test_sampled_per_bits: int = 30  # mean@k / pass@k set: stratified("test", 30)
    k: int = 4  # samples per test prompt at T=1
    dataset_size: int = 4096  # builtin bitcount rows (train split, difficulty-uniform)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completions(self) -> int:
        """The equal budget in generated completions (resample rounds count)."""
        return self.steps * self.prompts * self.group


CONFIGS: dict[str, Budget] = {
    "full": Budget(),
    # CI: 1 seed, 3 arms (resample exercises the budget checkpoint), a few steps, a short
    # warm-up (cached after the first run), small eval/test sets.
    "smoke": Budget(
        steps=4,
        prompts=4,
        seeds=(0,),
        arms=("grpo", "resample", "agpo-len"),
        warmup_steps=40,
        eval_every=2,
        eval_prompts=26,
        test_greedy_per_bits=3,
        test_sampled_per_bits=2,
        k=2,
        dataset_size=256,
    ),
    # a second, longer budget, fixed after the full run's timings (its grpo arms took ~50 s
    # instead of the pilot's ~4 min: the pilot ran under load 5) and before any of its
    # outcomes were read; same arms, seeds and rules
    "long": Budget(steps=160),
    # the pilot that sized the full budget (timing only)
    "pilot": Budget(steps=10, seeds=(0,), arms=("grpo", "resample"), eval_every=5),
}


def manifest(arm: str, seed: int, b: Budget) -> dict[str, Any]:
    """The AGPOJob of one arm and seed (resolved by the API model; saved with every run)."""
    zero_variance, length = ARMS[arm]
    return {
        "apiVersion": "agpo.dev/v1alpha1",
        "kind": "AGPOJob",
        "metadata": {"name": f"study-{arm}-s{seed}"},
        "spec": {
            "model": {"name": "builtin:tiny", "dtype": "float32"},
            "dataset": {
                "source": {"builtin": {"task": "bitcount", "size": b.dataset_size, "seed": seed}},
                "promptTemplate": "{prompt}",
            },
            "algorithm": {
                "preset": "agpo",
                "advantage": "grpo",
                "zeroVariance": zero_variance,
                "lengthReward": dict(length),
                "policyLoss": "clipped",
                "lossAggregation": "token-mean",
                "clip": {"low": 0.2, "high": 0.28},
                "klCoefficient": 0.0,
                "groupSize": b.group,
                "maxResampleRounds": b.max_resample_rounds,
            },
            "training": {
                "steps": b.steps,
                "promptsPerStep": b.prompts,
                "learningRate": b.lr,
                "lrSchedule": "constant",
                "warmupSteps": 0,
                "weightDecay": 0.0,
                "maxGradNorm": 1.0,
                "maxPromptTokens": 48,
                "maxCompletionTokens": b.max_tokens,
                "temperature": 1.0,
                "seed": seed,
                "formatWarmupSteps": b.warmup_steps,
                "checkpoint": {"everySteps": max(b.steps, 1), "keep": 1},
            },
            "evaluation": {
                "everySteps": b.eval_every,
                "atEnd": True,
                "source": {"split": "eval"},
                "prompts": b.eval_prompts,
                "samples": 0,
                "answerMarker": "Answer:",
            },
        },
    }
