"""The builtin format warm-up (``training.formatWarmupSteps``): supervised steps that teach a
fresh model the answer format (one digit, then EOS) with *random* digits, before RL.

Random answers teach the format but no arithmetic: accuracy stays near chance (10%), and
everything above that is learned by RL.
"""

from __future__ import annotations

import logging
import random

import torch

from agpo_api.models import AGPOJobSpec
from agpo_trainer.data import Example
from agpo_trainer.experience import encode_prompt
from agpo_trainer.policy import Policy, pad

log = logging.getLogger("agpo_trainer")

BATCH = 32  # sequences per warm-up step
SEED_OFFSET = 7  # its own random stream, apart from the RL run's


def format_warmup(policy: Policy, examples: list[Example], spec: AGPOJobSpec, steps: int) -> None:
    """``steps`` cross-entropy steps on ``prompt + random digit + EOS``, answer tokens only."""
    rng = random.Random(spec.training.seed + SEED_OFFSET)
    tok, system = policy.tokenizer, spec.dataset.system_prompt
    eos = tok.eos_token_id
    for _ in range(steps):
        batch = [examples[rng.randrange(len(examples))] for _ in range(BATCH)]
        seqs = [
            encode_prompt(tok, e.prompt, system)
            + tok.encode(str(rng.randint(0, 9)), add_special_tokens=False)
            + [eos]
            for e in batch
        ]
        plen = [len(encode_prompt(tok, e.prompt, system)) for e in batch]
        ids, attn = pad(seqs, policy.pad_id, policy.device)
        logits = policy.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        target = ids[:, 1:]
        mask = torch.zeros_like(target, dtype=torch.bool)
        for i, (p, s) in enumerate(zip(plen, seqs, strict=True)):
            mask[i, p - 1 : len(s) - 1] = True
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        loss = (nll * mask).sum() / mask.sum()
        policy.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        policy.optimizer.step()
    # The warm-up must not consume the RL schedule or optimizer moments.
    policy.optimizer.state.clear()
    log.info("format warm-up: %d steps, last loss %.3f", steps, float(loss))
