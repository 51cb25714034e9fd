"""The format warm-up (``training.formatWarmupSteps``): supervised steps before RL, as the
builtin task's :class:`agpo_trainer.tasks.WarmupRecipe` says.

One loop for every task: cross-entropy on the completion tokens of the (prompt, completion)
pairs the task yields, one batch a step, with the policy's optimizer (its moments cleared
afterwards, so the warm-up consumes neither the RL schedule nor its moments) or an AdamW of the
recipe's own. A recipe may re-initialise the builtin model first (``builtin:tiny`` is built
with std 0.2 for peaked greedy choices; the bitcount recipe starts from std 0.02, seeded by
``training.seed``, on its own RNG) and cache the warmed weights (``AGPO_CACHE_DIR/warmup/``,
keyed by the recipe, steps, seed, model and prompt format), so a second run with the same
settings loads them instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from agpo_api.models import BuiltinSource
from agpo_api.resolved import ResolvedSpec
from agpo_trainer.data import Example
from agpo_trainer.distributed import broadcast_object
from agpo_trainer.models import BUILTIN_TINY
from agpo_trainer.policy import Policy, broadcast_state_dict, pad
from agpo_trainer.prompts import PromptEncoder
from agpo_trainer.tasks import OwnOptimizer, WarmupBatch, WarmupInput, WarmupRecipe, get_task

log = logging.getLogger("agpo_trainer")


def format_warmup(
    policy: Policy, examples: Sequence[Example], spec: ResolvedSpec, steps: int
) -> None:
    """The builtin task's warm-up on every rank (identical batches), or its cached result
    (``examples`` are the RL rows, which a task may draw its prompts from)."""
    builtin = _builtin(spec)
    recipe = get_task(builtin.task).warmup
    if recipe is None:
        raise ValueError(
            f"builtin task {builtin.task!r} has no format warm-up; set "
            "spec.training.formatWarmupSteps: 0"
        )
    rt = policy.rt
    path = None
    if recipe.cache_key is not None:
        key = cache_key(spec, recipe, steps)
        path = rt.cache_dir / "warmup" / f"{builtin.task}-{key}.safetensors"
        if _load_cached(policy, path):
            log.info("format warm-up (%s): %d steps, from the cache %s", builtin.task, steps, path)
            return
    if recipe.init_std is not None and spec.model.name == BUILTIN_TINY:
        _reinitialise(policy, spec.training.seed, recipe.init_std)
    inputs = WarmupInput(steps, spec.training.seed, examples, spec.dataset.prompt_template)
    loss = _train(policy, spec, recipe.batches(inputs), recipe.optimizer)
    if path is not None:
        _save(policy, path)
    log.info(
        "format warm-up (%s): %d steps, last loss %.3f%s",
        builtin.task, steps, loss, f" (cached at {path})" if path else "",
    )  # fmt: skip


def cache_key(spec: ResolvedSpec, recipe: WarmupRecipe, steps: int) -> str:
    """What the warmed weights depend on, hashed."""
    m, d = spec.model, spec.dataset
    key: dict[str, object] = {
        "recipe": dict(recipe.cache_key or {}), "steps": steps, "seed": spec.training.seed,
        "model": [m.name, m.revision, m.dtype, m.tokenizer],
        "prompt": [d.prompt_template, d.system_prompt],
    }  # fmt: skip
    # Only when set, so the keys of jobs without them (caches already made) stay the same.
    if d.example_turns:
        key["turns"] = [[t.user, t.assistant] for t in d.example_turns]
    if m.source is not None:
        key["source"] = m.source.to_dict()
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _builtin(spec: ResolvedSpec) -> BuiltinSource:
    builtin = spec.dataset.source.builtin
    if builtin is None:  # the spec's rule: formatWarmupSteps needs a builtin task
        raise ValueError("training.formatWarmupSteps needs dataset.source.builtin")
    return builtin


def _train(
    policy: Policy, spec: ResolvedSpec, batches: list[WarmupBatch], own: OwnOptimizer | None
) -> float:
    """Cross-entropy on the completion tokens (then EOS) of every batch; the last loss."""
    tok, encode = policy.tokenizer, PromptEncoder(policy.tokenizer, spec.dataset)
    eos = tok.eos_token_id
    params = [p for p in policy.model.parameters() if p.requires_grad]
    opt = policy.optimizer
    if own is not None:
        opt = torch.optim.AdamW(params, lr=own.lr, betas=own.betas, weight_decay=0.0)
    loss_v = float("nan")
    policy.model.train()
    for step, batch in enumerate(batches, start=1):
        prompts = [encode(p) for p, _ in batch]
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
        if own is not None:
            torch.nn.utils.clip_grad_norm_(params, own.clip)
            for g in opt.param_groups:
                g["lr"] = own.lr * min(1.0, step / own.lr_warmup)
        opt.step()
        loss_v = float(loss.detach())
    if own is None:
        policy.optimizer.state.clear()  # the RL run starts with fresh moments
    else:
        policy.optimizer.zero_grad(set_to_none=True)
    return loss_v


def _load_cached(policy: Policy, path: Path) -> bool:
    """Rank 0 reads the cached weights and every rank gets them (ranks on other nodes may
    lack the cache); False when there are none."""
    from safetensors.torch import load_file

    rt = policy.rt
    if not broadcast_object(path.is_file() if rt.is_main else None, rt.rank):
        return False
    state = broadcast_state_dict(load_file(str(path)) if rt.is_main else None, rt.rank)
    _load_weights(policy, state)
    return True


def _save(policy: Policy, path: Path) -> None:
    from safetensors.torch import save_file

    weights = policy.gather_weights()  # a collective under FSDP: every rank joins
    if not policy.rt.is_main:
        return
    full = weights if weights is not None else policy.module.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in full.items()}
    if getattr(policy.module.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied: safetensors refuses shared storage
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    save_file(state, str(tmp))
    os.replace(tmp, path)


def _reinitialise(policy: Policy, seed: int, std: float) -> None:
    """The builtin model re-initialised with ``std`` (seeded, on its own RNG: the trainer's is
    not consumed)."""
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(policy.module.config)
    config.initializer_range = std
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
