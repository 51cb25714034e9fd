"""The builtin format warm-up (``training.formatWarmupSteps``): supervised steps before RL.

* ``arithmetic``: the answer format (one digit, then EOS) with *random* digits. Random
  answers teach the format but no arithmetic: accuracy stays near chance (10%), and
  everything above that is learned by RL.
* ``bitcount``: the learnability gate's ``tiny-skew6`` warm-up (``study/gate.py``,
  docs/results.md): the task's mixed formats (filler 0..6, scratch with probability 0.5) with
  the *right* answers, on the ``warmup`` split only (never an RL, eval or test prompt), bit
  counts drawn with weight ``0.5 ** max(0, n - 6)`` so long strings stay hard; ``builtin:tiny``
  re-initialised as in the gate (std 0.02, seeded by ``training.seed``); its own AdamW
  (lr 1e-3, 50-step linear warm-up, betas 0.9/0.98, clip 1), batch 64. The warmed weights are
  cached (``AGPO_CACHE_DIR/warmup/``, keyed by the recipe, steps, seed, model and prompt
  format), so a second run with the same settings loads them instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from typing import Any

import torch

from agpo_api.models import AGPOJobSpec
from agpo_trainer.data import Example, apply_template
from agpo_trainer.distributed import broadcast_object
from agpo_trainer.experience import encode_prompt
from agpo_trainer.policy import Policy, broadcast_state_dict, pad
from agpo_trainer.tasks import bitcount

log = logging.getLogger("agpo_trainer")

BATCH = 32  # sequences per warm-up step
SEED_OFFSET = 7  # its own random stream, apart from the RL run's


def format_warmup(policy: Policy, examples: list[Example], spec: AGPOJobSpec, steps: int) -> None:
    """The warm-up of the job's builtin task (``examples`` are the RL rows: only the
    arithmetic warm-up draws its prompts from them)."""
    builtin = spec.dataset.source.builtin
    if builtin is not None and builtin.task == "bitcount":
        bitcount_warmup(policy, spec, steps)
        return
    digit_warmup(policy, examples, spec, steps)


def digit_warmup(policy: Policy, examples: list[Example], spec: AGPOJobSpec, steps: int) -> None:
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


# --------------------------------------------------------------------------- bitcount
#: The gate's tiny-skew6 recipe (study/gate.py); bump VERSION when its meaning changes.
BITCOUNT_RECIPE: dict[str, Any] = {
    "version": 2, "init_std": 0.02, "lr": 1e-3, "lr_warmup": 50, "betas": (0.9, 0.98), "clip": 1.0,
    "batch": 64, "scratch_prob": 0.5, "decay": 0.5, "decay_from": 6, "seed_offset": 7,
}  # fmt: skip


def bitcount_batches(steps: int, seed: int) -> list[list[tuple[str, str]]]:
    """Every warm-up batch as (prompt, completion) pairs: ``warmup``-split prompts only, bit
    count ``n`` drawn with weight ``decay ** max(0, n - decay_from)``, then a uniform prompt
    of that length, filler uniform 0..6, scratch with probability 0.5, the right answer."""
    r = BITCOUNT_RECIPE
    rng = random.Random(seed + r["seed_offset"])
    buckets: dict[int, list[bitcount.Problem]] = {}
    for p in bitcount.problems("warmup"):
        buckets.setdefault(p.difficulty, []).append(p)
    keys = sorted(buckets)
    weights = [r["decay"] ** max(0, n - r["decay_from"]) for n in keys]
    out = []
    for _ in range(steps):
        batch = []
        for _ in range(r["batch"]):
            p = rng.choice(buckets[rng.choices(keys, weights)[0]])
            filler = rng.randint(0, bitcount.MAX_FILLER)
            text = bitcount.make_completion(
                p.bits, filler=filler, scratch=rng.random() < r["scratch_prob"]
            )
            batch.append((p.prompt, text))
        out.append(batch)
    return out


def bitcount_cache_key(spec: AGPOJobSpec, steps: int) -> str:
    """What the warmed weights depend on, hashed."""
    m, d = spec.model, spec.dataset
    key = {
        "recipe": BITCOUNT_RECIPE, "steps": steps, "seed": spec.training.seed,
        "model": [m.name, m.revision, m.dtype, m.tokenizer],
        "prompt": [d.prompt_template, d.system_prompt],
    }  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def bitcount_warmup(policy: Policy, spec: AGPOJobSpec, steps: int) -> None:
    """The tiny-skew6 warm-up on every rank (identical batches), or its cached result."""
    from safetensors.torch import load_file, save_file

    rt = policy.rt
    path = rt.cache_dir / "warmup" / f"bitcount-{bitcount_cache_key(spec, steps)}.safetensors"
    hit = broadcast_object(path.is_file() if rt.is_main else None, rt.rank)
    if hit:  # rank 0 reads it; every rank gets it (ranks on other nodes may lack the cache)
        state = broadcast_state_dict(load_file(str(path)) if rt.is_main else None, rt.rank)
        _load_weights(policy, state)
        log.info("format warm-up (bitcount): %d steps, from the cache %s", steps, path)
        return
    if spec.model.name == "builtin:tiny":
        _reinitialise(policy, spec.training.seed)
    loss = _train_bitcount(policy, spec, steps)
    weights = policy.gather_weights()  # a collective under FSDP: every rank joins
    if rt.is_main:
        full = weights if weights is not None else policy.module.state_dict()
        state = {k: v.detach().cpu().contiguous() for k, v in full.items()}
        if getattr(policy.module.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied: safetensors refuses shared storage
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        save_file(state, str(tmp))
        os.replace(tmp, path)
    log.info(
        "format warm-up (bitcount): %d steps, last loss %.3f (cached at %s)", steps, loss, path
    )


def _train_bitcount(policy: Policy, spec: AGPOJobSpec, steps: int) -> float:
    r = BITCOUNT_RECIPE
    tok, system = policy.tokenizer, spec.dataset.system_prompt
    eos = tok.eos_token_id
    params = [p for p in policy.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=r["lr"], betas=r["betas"], weight_decay=0.0)
    loss_v = float("nan")
    policy.model.train()
    for step, batch in enumerate(bitcount_batches(steps, spec.training.seed), start=1):
        prompts = [
            encode_prompt(tok, apply_template(spec.dataset.prompt_template, p), system)
            for p, _ in batch
        ]
        seqs = [
            q + tok.encode(c, add_special_tokens=False) + [eos]
            for q, (_, c) in zip(prompts, batch, strict=True)
        ]
        ids, attn = pad(seqs, policy.pad_id, policy.device)
        logits = policy.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        target = ids[:, 1:]
        mask = torch.zeros_like(target, dtype=torch.bool)
        for i, (q, s) in enumerate(zip(prompts, seqs, strict=True)):
            mask[i, len(q) - 1 : len(s) - 1] = True
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        loss = (nll * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, r["clip"])
        for g in opt.param_groups:
            g["lr"] = r["lr"] * min(1.0, step / r["lr_warmup"])
        opt.step()
        loss_v = float(loss.detach())
    policy.optimizer.zero_grad(set_to_none=True)
    return loss_v


def _reinitialise(policy: Policy, seed: int) -> None:
    """The gate's initialisation of the builtin model (std 0.02, seeded): builtin:tiny is
    built with std 0.2 (peaked greedy choices for the vLLM parity tests), from which 200
    warm-up steps reach a much weaker start. Its own RNG: the trainer's is not consumed."""
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(policy.module.config)
    config.initializer_range = BITCOUNT_RECIPE["init_std"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(
            config, dtype=next(policy.module.parameters()).dtype
        )
    _load_weights(policy, fresh.state_dict())


def _load_weights(policy: Policy, state: dict[str, torch.Tensor]) -> None:
    """Full weights into this rank's model (sharding them under FSDP)."""
    if policy.sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        opts = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(policy.model, state, options=opts)
        return
    missing, _ = policy.module.load_state_dict(state, strict=False)
    if any(not k.endswith("lm_head.weight") for k in missing):
        raise RuntimeError(f"cached warm-up weights do not fit the model: {missing[:3]}")
