"""AGPO operator: reconciles AGPOJob resources into vLLM rollout pods and a torchrun trainer group.

``kopf run -m agpo_operator`` imports this package with kopf already loaded; only then are the
kopf handlers registered. Everyone else (the ``agpo`` CLI, the trainer image, which has no
kopf) imports ``agpo_api`` and the pure builders without pulling kopf in.
"""

import sys

if "kopf" in sys.modules:  # started by `kopf run -m agpo_operator`
    from agpo_operator import handlers as handlers
