"""The study's arms and budgets as AGPOJob manifests (the same objects `agpo run` takes).

Every arm but ``grpo-preset`` is the ``agpo`` preset's base (grpo advantages, clipped loss
0.2/0.28, token-mean, no KL: the gate's GRPO run) with the two AGPO ingredients set
explicitly, so those arms differ only in ``zeroVariance`` and ``lengthReward``:

| arm | zeroVariance | lengthReward |
| --- | --- | --- |
| grpo | keep | none |
| agpo | agpo (+-1) | none |
| mask | mask | none |
| resample | resample (DAPO dynamic sampling, maxResampleRounds rounds) | none |
| agpo-len | agpo (+-1) | agpo, coefficient 0.1 (the paper's AGPO) |
| grpo-len | keep | agpo, coefficient 0.1 |
| agpo-len-all (second edition) | agpo (+-1) | agpo, coefficient 0.1, scope all |

``grpo-preset`` (second edition) is exactly ``preset: grpo`` (KL 0.04 to the warm base,
per-sequence token mean, clip 0.2): what a user gets, as a secondary comparison.

The first edition (issue #10: ``full``, ``long``, ``pilot``) ran the first six arms on
``bitcount``; the second (issue #19: ``v2``, ``v2-pilot``, ``smoke``) runs all eight on
``bitcount-copy``, the task that passed the second-edition gate, with its 1000-step warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

NONE_LENGTH = {"type": "none", "coefficient": 0.0}
AGPO_LENGTH = {"type": "agpo", "coefficient": 0.1}


def explicit(zero_variance: str, length: dict[str, Any]) -> dict[str, Any]:
    """The agpo preset's base, every field set, with these two ingredients."""
    return {
        "preset": "agpo",
        "advantage": "grpo",
        "zeroVariance": zero_variance,
        "lengthReward": dict(length),
        "policyLoss": "clipped",
        "lossAggregation": "token-mean",
        "clip": {"low": 0.2, "high": 0.28},
        "klCoefficient": 0.0,
    }


#: arm -> its spec.algorithm (groupSize and maxResampleRounds come from the budget)
ARMS: dict[str, dict[str, Any]] = {
    "grpo": explicit("keep", NONE_LENGTH),
    "agpo": explicit("agpo", NONE_LENGTH),
    "mask": explicit("mask", NONE_LENGTH),
    "resample": explicit("resample", NONE_LENGTH),
    "agpo-len": explicit("agpo", AGPO_LENGTH),
    "grpo-len": explicit("keep", AGPO_LENGTH),
    "agpo-len-all": explicit("agpo", AGPO_LENGTH | {"scope": "all"}),
    "grpo-preset": {"preset": "grpo"},
}
FIRST_EDITION = ("grpo", "agpo", "mask", "resample", "agpo-len", "grpo-len")
#: the second edition's seed counts (docs/results.md, "power analysis"): 15 seeds are needed for
#: 80% power on the token claim, 12 on mean@k; 8 arms x 15 seeds would take about 2.2 hours
#: here (the pilot's and v2-timing's timings), so the two primary arms and agpo-len-all (the
#: scope the issue asks to test) get 15, the others the minimum, 10 (about 1.8 hours)
SEEDS_ALL_ARMS = 10
SEEDS_PRIMARY = 15
PRIMARY_ARMS = ("grpo", "agpo-len")
MORE_SEEDS_ARMS = (*PRIMARY_ARMS, "agpo-len-all")


@dataclass(frozen=True)
class Budget:
    """One study configuration (``v2`` is ``make study``, ``smoke`` is CI's). The defaults
    are the first edition's."""

    steps: int = 80  # RL steps of the fixed-cost arms; budget = steps x prompts x group
    prompts: int = 16  # prompts per step
    group: int = 8  # G
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = FIRST_EDITION
    task: str = "bitcount"  # the builtin task
    edition: int = 1  # which pre-registered claims (analysis.CLAIMS) and plot names
    warmup_steps: int = 200  # training.formatWarmupSteps: the task's registered warm-up
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
    # seeds run by some arms only (the second edition's primary arms: the power analysis asks
    # for more seeds than every arm can have in the time)
    more_seeds: tuple[int, ...] = ()
    more_seeds_arms: tuple[str, ...] = ()

    @property
    def all_seeds(self) -> tuple[int, ...]:
        return self.seeds + self.more_seeds

    def runs(self) -> list[tuple[str, int]]:
        """Every (arm, seed) of the configuration."""
        return [(a, s) for a in self.arms for s in self.seeds] + [
            (a, s) for a in self.more_seeds_arms for s in self.more_seeds
        ]

    @property
    def completions(self) -> int:
        """The equal budget in generated completions (resample rounds count)."""
        return self.steps * self.prompts * self.group


#: the second edition (issue #19): bitcount-copy with the recipe and warm-up length that passed
#: the gate; every arm; test sets of 1,113 prompts (stratified("test", 225): 225 each of
#: 11-14 bits, the 213 shorter strings the split has), so the standard error of mean@k is at most
#: sqrt(0.25 / 1113) = 1.5 points per arm and seed even if the k samples of a prompt agree
V2 = Budget(
    task="bitcount-copy",
    edition=2,
    arms=tuple(ARMS),
    seeds=tuple(range(SEEDS_ALL_ARMS)),
    more_seeds=tuple(range(SEEDS_ALL_ARMS, SEEDS_PRIMARY)),
    more_seeds_arms=MORE_SEEDS_ARMS,
    warmup_steps=1000,
    max_tokens=72,  # bitcount-copy's longest grammatical completion: 63 tokens
    test_greedy_per_bits=225,
    test_sampled_per_bits=225,
)

CONFIGS: dict[str, Budget] = {
    # ---- the first edition (issue #10, docs/results.md "AGPO vs GRPO study"), kept as history
    "full": Budget(),
    # a second, longer budget, fixed after the full run's timings (its grpo arms took ~50 s
    # instead of the pilot's ~4 min: the pilot ran under load 5) and before any of its
    # outcomes were read; same arms, seeds and rules
    "long": Budget(steps=160),
    # the pilot that sized the full budget (timing only)
    "pilot": Budget(steps=10, seeds=(0,), arms=("grpo", "resample"), eval_every=5),
    # ---- the second edition (issue #19): `make study`
    "v2": V2,
    # the pilot that sized it (seeds outside the study's): timings, and the seed-to-seed SD of
    # the paired differences on the new task for study/power.py
    "v2-pilot": replace(V2, seeds=(100, 101, 102), arms=PRIMARY_ARMS, more_seeds=()),
    # timing only (the two arms whose cost the pilot did not measure), on a pilot seed
    "v2-timing": replace(V2, seeds=(100,), arms=("resample", "grpo-preset"), more_seeds=()),
    # CI: the second edition's set-up, 1 seed, 4 arms (resample exercises the budget
    # checkpoint, grpo-preset the KL reference), a few steps, a short warm-up (cached after
    # the first run), small eval/test sets.
    "smoke": replace(
        V2,
        steps=4,
        prompts=4,
        seeds=(0,),
        more_seeds=(),
        arms=("grpo", "resample", "agpo-len-all", "grpo-preset"),
        warmup_steps=40,
        eval_every=2,
        eval_prompts=26,
        test_greedy_per_bits=3,
        test_sampled_per_bits=2,
        k=2,
        dataset_size=256,
    ),
}


def manifest(arm: str, seed: int, b: Budget) -> dict[str, Any]:
    """The AGPOJob of one arm and seed (resolved by the API model; saved with every run)."""
    return {
        "apiVersion": "agpo.dev/v1alpha1",
        "kind": "AGPOJob",
        "metadata": {"name": f"study-{arm}-s{seed}"},
        "spec": {
            "model": {"name": "builtin:tiny", "dtype": "float32"},
            "dataset": {
                "source": {"builtin": {"task": b.task, "size": b.dataset_size, "seed": seed}},
                "promptTemplate": "{prompt}",
            },
            "algorithm": ARMS[arm]
            | {"groupSize": b.group, "maxResampleRounds": b.max_resample_rounds},
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
