"""The learning-rate schedule (``training.lrSchedule``, ``warmupSteps``): a factor per step
for ``torch.optim.lr_scheduler.LambdaLR``.

Why not ``transformers.get_scheduler``: its warm-up is ``step / warmup``, so step 0 trains at
learning rate 0. In RL every step costs a full rollout (generation on every vLLM server), so a
step that cannot change the policy is a real waste; ours is ``(step + 1) / warmup``, and the
first step already learns. The decay after warm-up is the usual constant / linear / cosine to
0 at the last step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from agpo_api.resolved import ResolvedSpec


def constant_decay(progress: float) -> float:
    return 1.0


def linear_decay(progress: float) -> float:
    return max(0.0, 1.0 - progress)


def cosine_decay(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


#: ``training.lrSchedule`` -> the factor after warm-up, from ``progress`` (0 -> 1 at the end).
DECAYS: dict[str, Callable[[float], float]] = {
    "constant": constant_decay,
    "linear": linear_decay,
    "cosine": cosine_decay,
}


def lr_lambda(spec: ResolvedSpec) -> Callable[[int], float]:
    """Linear warmup, then constant, linear or cosine decay to 0 at the last step."""
    t = spec.training
    warmup: int = t.warmup_steps
    steps: int = t.steps
    decay = DECAYS[t.lr_schedule]

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return decay((step - warmup) / max(1, steps - warmup))

    return factor
