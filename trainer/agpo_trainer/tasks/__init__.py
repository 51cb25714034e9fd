"""Builtin reasoning tasks that generalise (pure Python, no torch).

Each task module is a pure generator: the problem space, a stable-hash split into warm-up /
RL-train / eval / test, a difficulty per problem, the completion grammar and a grader.
See ``bitcount`` (tagged bit counting, ``a1b0c1=`` -> ``Answer:2``).
"""

from agpo_trainer.tasks import bitcount

__all__ = ["bitcount"]
