"""The AGPO training loop, one process per torchrun rank.

Per step: rank 0 draws prompts, asks the vLLM servers for ``groupSize`` completions each,
scores them, computes advantages (AGPO/GRPO/Dr. GRPO + the zero-variance policy), and hands
every rank an equal slice; each rank computes the clipped policy loss on its slice (the
denominator is the global one, so the result does not depend on the world size), DDP/FSDP
averages the gradients, the optimizer steps, and rank 0 pushes the new weights into every
vLLM server. Rank 0 alone logs, checkpoints and serves metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from agpo_api.models import AGPOJob, AGPOJobSpec
from agpo_trainer.algorithms import compute_advantages_and_mask, compute_policy_loss, token_logprobs
from agpo_trainer.checkpoint import (
    CheckpointMeta,
    latest_checkpoint,
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from agpo_trainer.data import Example, PromptSampler, load_examples
from agpo_trainer.metrics import StatusBoard, TrainerMetrics, serve
from agpo_trainer.rewards.scoring import attainable_reward_range, score

log = logging.getLogger("agpo_trainer")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------- runtime settings
@dataclass(frozen=True)
class Runtime:
    """Where this process runs: torchrun's env plus the pod/launcher settings (``AGPO_*``)."""

    rank: int
    world_size: int
    local_rank: int
    rollout_urls: list[str]
    rollout_token: str | None
    checkpoint_dir: Path
    metrics_port: int | None
    weight_sync_host: str | None
    weight_sync_port: int
    cache_dir: Path
    base_dir: Path | None
    max_steps: int | None = None
    micro_batch_size: int = 64
    # How long a rollout server may be unreachable before the job fails (not hangs).
    rollout_timeout_s: float = 300.0
    # Fault injection for tests: after this step (and its checkpoint) rank 0 SIGKILLs the
    # whole torchrun process group, as an OOM kill or a node loss would.
    crash_after_step: int | None = None

    @staticmethod
    def from_env(job: AGPOJob, env: dict[str, str] | None = None) -> Runtime:
        e = dict(os.environ if env is None else env)
        name = job.metadata.name or "agpojob"
        urls = [u for u in e.get("AGPO_ROLLOUT_URLS", "").split(",") if u]
        if not urls:
            raise ConfigError(
                "AGPO_ROLLOUT_URLS is empty: set the vLLM server URLs (comma-separated)"
            )
        port = e.get("AGPO_METRICS_PORT", str(job.spec.metrics.port))
        return Runtime(
            rank=int(e.get("RANK", "0")),
            world_size=int(e.get("WORLD_SIZE", "1")),
            local_rank=int(e.get("LOCAL_RANK", "0")),
            rollout_urls=urls,
            rollout_token=e.get("AGPO_ROLLOUT_TOKEN") or None,
            checkpoint_dir=Path(e.get("AGPO_CHECKPOINT_DIR", f"runs/{name}/checkpoints")),
            metrics_port=int(port) if port and port != "0" else None,
            weight_sync_host=e.get("AGPO_WEIGHT_SYNC_HOST") or None,  # None: the pod IP
            weight_sync_port=int(
                e.get("AGPO_WEIGHT_SYNC_PORT", str(job.spec.rollout.weight_sync.port))
            ),
            cache_dir=Path(e.get("AGPO_CACHE_DIR", str(Path.home() / ".cache" / "agpo"))),
            base_dir=Path(e["AGPO_BASE_DIR"]) if e.get("AGPO_BASE_DIR") else None,
            max_steps=int(e["AGPO_MAX_STEPS"]) if e.get("AGPO_MAX_STEPS") else None,
            micro_batch_size=int(e.get("AGPO_MICRO_BATCH_SIZE", "64")),
            rollout_timeout_s=float(e.get("AGPO_ROLLOUT_TIMEOUT", "300")),
            crash_after_step=int(e["AGPO_CRASH_AFTER_STEP"])
            if e.get("AGPO_CRASH_AFTER_STEP")
            else None,
        )


class ConfigError(ValueError):
    """The trainer's environment is incomplete; the message says which variable."""


# --------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """One step's training data for every rank (built on rank 0, broadcast to all)."""

    prompt_ids: list[list[int]]  # per completion
    completion_ids: list[list[int]]
    old_logprobs: list[list[float]]
    advantages: list[float]
    sample_mask: list[bool]
    example_indices: list[int]  # per prompt, for reproducibility checks
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.completion_ids)

    def shard(self, rank: int, world: int) -> Batch:
        per = len(self) // world
        sl = slice(rank * per, (rank + 1) * per)
        return Batch(
            self.prompt_ids[sl],
            self.completion_ids[sl],
            self.old_logprobs[sl],
            self.advantages[sl],
            self.sample_mask[sl],
            self.example_indices,
            self.stats,
        )

    def valid_counts(self) -> tuple[int, int]:
        """(included response tokens, included sequences): the loss's global denominators."""
        tokens = sum(
            len(c) for c, m in zip(self.completion_ids, self.sample_mask, strict=True) if m
        )
        return tokens, sum(self.sample_mask)


def lr_lambda(spec: AGPOJobSpec) -> Any:
    """Linear warmup, then constant, linear or cosine decay to 0 at the last step."""
    t = spec.training

    def factor(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.lr_schedule == "constant":
            return 1.0
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        if t.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# --------------------------------------------------------------------------- the trainer
class Trainer:
    """Holds the model, optimizer, data and connections of one rank."""

    def __init__(self, job: AGPOJob, rt: Runtime) -> None:
        self.job, self.spec, self.rt = job, job.spec, rt
        self.is_main = rt.rank == 0
        self.device = torch.device(f"cuda:{rt.local_rank}" if torch.cuda.is_available() else "cpu")
        self.step = 0
        self.policy_version = 0
        self.metrics = TrainerMetrics()
        self.board = StatusBoard(phase="Initializing", step=0, totalSteps=self.total_steps)
        self.http: Any = None
        self.syncer: Any = None
        self.client: Any = None

    @property
    def total_steps(self) -> int:
        steps = self.spec.training.steps
        return min(steps, self.rt.max_steps) if self.rt.max_steps else steps

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from agpo_trainer.models import model_location
        from agpo_trainer.rewards.scoring import get_reward_function

        spec = self.spec
        for name, _ in self._reward_terms():  # a broken reward function fails before any work
            get_reward_function(name)
        seed = spec.training.seed
        random.seed(seed)
        torch.manual_seed(seed)
        # Every rank loads the data: a bad dataset must stop every rank with the same error.
        self.examples = load_examples(spec.dataset, self.rt.base_dir)
        self.sampler = PromptSampler(self.examples, seed)

        if self.is_main:
            model_location(spec.model, self.rt.cache_dir)  # rank 0 builds builtin models once
        barrier()
        # In pods the operator says where it mounted the weights (AGPO_MODEL_PATH).
        model_dir = os.environ.get("AGPO_MODEL_PATH") or model_location(
            spec.model, self.rt.cache_dir
        )
        self.model_dir = model_dir
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model.tokenizer or model_dir)
        dtype = DTYPES[spec.model.dtype]
        kwargs = {"revision": spec.model.revision} if spec.model.revision else {}
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **kwargs).to(
            self.device
        )
        self.ref_model: nn.Module | None = None
        self.model = self._wrap(model)
        t = spec.training
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(spec))
        # Custom rewards may declare no bounds; then the accuracy range [0, 1] is assumed.
        self.min_reward, self.max_reward = attainable_reward_range(self._reward_terms()) or (
            0.0,
            1.0,
        )
        resumed = self._maybe_resume()
        if not resumed and t.format_warmup_steps:
            self.format_warmup(t.format_warmup_steps)
        if spec.algorithm.kl_coefficient > 0:  # a reference model only when the KL term is on
            self.ref_model = self._reference_model(resumed)

    def _reference_model(self, resumed: bool) -> nn.Module:
        """The frozen initial RL policy (after any format warm-up) for the KL term.

        It is saved once next to the checkpoints, so a resumed run keeps the same reference.
        """
        from transformers import AutoModelForCausalLM

        path = self.rt.checkpoint_dir / "reference"
        weights = self.gather_weights()  # a collective under FSDP: every rank joins
        if not (resumed and (path / "config.json").is_file()):
            if self.is_main:
                tmp = path.with_name(".tmp-reference")
                shutil.rmtree(tmp, ignore_errors=True)
                self.module.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
                shutil.rmtree(path, ignore_errors=True)
                tmp.rename(path)
            barrier()
        dtype = DTYPES[self.spec.model.dtype]
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device)
        return ref.eval().requires_grad_(False)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.rt.world_size == 1:
            return model
        if self.spec.trainer.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for layer in getattr(getattr(model, "model", model), "layers", []):
                fully_shard(layer)
            fully_shard(model)
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.rt.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    @property
    def module(self) -> nn.Module:
        """The unwrapped model (DDP keeps it in ``.module``)."""
        return getattr(self.model, "module", self.model)

    @property
    def sharded(self) -> bool:
        return self.spec.trainer.strategy == "fsdp" and self.rt.world_size > 1

    def gather_weights(self) -> dict[str, Tensor] | None:
        """Full weights of a sharded (FSDP) model, a collective every rank must join; None
        when the local module already holds them all (single process, DDP)."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # NCCL weight sync broadcasts from GPU memory; gloo and checkpoints take CPU tensors.
        on_gpu = self.device.type == "cuda" and self.spec.rollout.weight_sync.backend == "nccl"
        opts = StateDictOptions(full_state_dict=True, cpu_offload=not on_gpu)
        return get_model_state_dict(self.model, options=opts)

    def optimizer_state(self) -> dict[str, Any]:
        """The full optimizer state (gathered on rank 0 under FSDP; a collective then)."""
        if not self.sharded:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.model, self.optimizer, options=opts)

    def load_full_state(self, weights: dict[str, Tensor], optimizer: dict[str, Any]) -> None:
        """Load full (unsharded) weights and optimizer state, sharding them under FSDP."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, strict=False)
            set_model_state_dict(self.model, weights, options=opts)
            set_optimizer_state_dict(self.model, self.optimizer, optimizer, options=opts)
            return
        missing, _ = self.module.load_state_dict(weights, strict=False)
        if any(not k.endswith("lm_head.weight") for k in missing):  # tied embeddings are fine
            raise RuntimeError(f"checkpoint lacks weights: {missing[:3]}")
        self.optimizer.load_state_dict(optimizer)

    def _reward_terms(self) -> list[tuple[str, float]]:
        return [(r.name or r.function or "", r.weight) for r in self.spec.algorithm.rewards]

    def _maybe_resume(self) -> bool:
        ckpt = latest_checkpoint(self.rt.checkpoint_dir) if self.spec.training.resume else None
        if ckpt is None:
            return False
        from safetensors.torch import load_file

        meta, state = load_state(ckpt)
        weights = {}
        for f in sorted(ckpt.glob("*.safetensors")):
            weights.update(load_file(str(f)))
        self.load_full_state(weights, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.step, self.policy_version = meta.step, meta.policy_version
        log.info(
            "resumed from %s at step %d (policy version %d)", ckpt, self.step, self.policy_version
        )
        return True

    # ----------------------------------------------------------------- format warm-up
    def format_warmup(self, steps: int) -> None:
        """Teach a fresh model the answer format (one digit, then EOS) with *random* digits.

        Random answers teach the format but no arithmetic: accuracy stays near chance (10%),
        and everything above that is learned by RL.
        """
        rng = random.Random(self.spec.training.seed + 7)
        eos = self.tokenizer.eos_token_id
        for _ in range(steps):
            batch = self.sampler_peek(rng, 32)
            seqs = [
                self.encode_prompt(e.prompt)
                + self.tokenizer.encode(str(rng.randint(0, 9)), add_special_tokens=False)
                + [eos]
                for e in batch
            ]
            plen = [len(self.encode_prompt(e.prompt)) for e in batch]
            ids, attn = pad(seqs, self.tokenizer.pad_token_id or 0, self.device)
            logits = self.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
            target = ids[:, 1:]
            mask = torch.zeros_like(target, dtype=torch.bool)
            for i, (p, s) in enumerate(zip(plen, seqs, strict=True)):
                mask[i, p - 1 : len(s) - 1] = True
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), target, reduction="none"
            )
            loss = (nll * mask).sum() / mask.sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        # The warm-up must not consume the RL schedule or optimizer moments.
        self.optimizer.state.clear()
        log.info("format warm-up: %d steps, last loss %.3f", steps, float(loss))

    def sampler_peek(self, rng: random.Random, n: int) -> list[Example]:
        return [self.examples[rng.randrange(len(self.examples))] for _ in range(n)]

    def encode_prompt(self, prompt: str) -> list[int]:
        system = self.spec.dataset.system_prompt
        if getattr(self.tokenizer, "chat_template", None) and system is not None:
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
            return list(
                self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            )
        text = f"{system}\n{prompt}" if system else prompt
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    # ----------------------------------------------------------------- rank 0: rollouts
    def connect(self) -> None:
        """Rank 0: metrics endpoint, rollout client, weight sync (pushes the initial weights)."""
        from agpo_trainer.rollout.client import RolloutClient
        from agpo_trainer.rollout.weight_sync import WeightSyncer

        if self.rt.metrics_port:
            self.http = serve(self.metrics, self.board, self.rt.metrics_port)
        self.metrics.total_steps.set(self.total_steps)
        timeout = self.rt.rollout_timeout_s
        self.client = RolloutClient(self.rt.rollout_urls, self.rt.rollout_token, timeout_s=timeout)
        self.syncer = WeightSyncer(
            self.rt.rollout_urls,
            token=self.rt.rollout_token,
            backend=self.spec.rollout.weight_sync.backend,
            master_address=self.rt.weight_sync_host,
            master_port=self.rt.weight_sync_port,
            timeout_s=min(120.0, timeout),
            ready_timeout_s=timeout,
        )
        self.syncer.init()

    def push_weights(self, weights: dict[str, Tensor] | None = None) -> float:
        """Rank 0: send the policy (``weights`` when gathered from shards) to every server."""
        seconds = float(
            self.syncer.push(self.module if weights is None else weights, self.policy_version)
        )
        self.metrics.weight_sync_duration.observe(seconds)
        self.metrics.served_version.set(self.policy_version)
        return seconds

    def rollout(self) -> Batch:
        """Rank 0: generate, score and compute advantages for one step's batch."""
        spec = self.spec
        algo, t = spec.algorithm, spec.training
        g = algo.group_size
        want = t.prompts_per_step
        examples: list[Example] = []
        completions: list[Any] = []
        start = time.perf_counter()
        rounds = 0
        while True:
            fresh = self._draw(want, examples)
            new = self.client.generate(
                fresh,
                n=g,
                max_tokens=t.max_completion_tokens,
                temperature=t.temperature,
                top_p=t.top_p,
                seed=t.seed * 1_000_003 + self.step * 10_007 + rounds * 101,
            )
            completions.extend(new)
            if algo.zero_variance != "resample" or rounds >= algo.max_resample_rounds:
                break
            rewards, *_ = self._score(examples, completions)
            keep = _groups_with_variance(rewards, g)
            if len(keep) >= want:
                break
            rounds += 1
            self.metrics.resampled_prompts.inc(want)
        rollout_s = time.perf_counter() - start
        start = time.perf_counter()
        rewards, components, correct = self._score(examples, completions)
        if algo.zero_variance == "resample":
            # DAPO dynamic sampling: keep groups with variance first, then fill with the rest
            # (which the loss masks), so the batch always has promptsPerStep groups.
            order = select_groups(rewards, g, want)
            examples = [examples[i] for i in order]
            completions = [completions[i * g + j] for i in order for j in range(g)]
            idx = torch.tensor([i * g + j for i in order for j in range(g)])
            rewards, correct = rewards[idx], correct[idx]
            components = {k: v[idx] for k, v in components.items()}
        adv, mask = compute_advantages_and_mask(
            rewards,
            g,
            advantage=algo.advantage,
            zero_variance=algo.zero_variance,
            max_reward=self.max_reward,
            min_reward=self.min_reward,
            zero_variance_value=algo.zero_variance_advantage,
        )
        lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
        grouped = rewards.view(-1, g)
        zero_var = (grouped.max(dim=1).values - grouped.min(dim=1).values).abs() < 1e-6
        stats = {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "accuracy": float(correct.float().mean()),
            "zero_variance_fraction": float(zero_var.float().mean()),
            "completion_tokens_mean": float(lengths.mean()),
            "clipped_ratio": sum(c.truncated for c in completions) / len(completions),
            "rollout_seconds": rollout_s,
            "reward_seconds": time.perf_counter() - start,
            "rollout_tokens": float(lengths.sum()),
            "resample_rounds": float(rounds),
            **{f"reward/{k}": float(v.mean()) for k, v in components.items()},
        }
        for n in lengths.tolist():
            self.metrics.tokens_hist.observe(n)
        return Batch(
            prompt_ids=[c.prompt_token_ids for c in completions],
            completion_ids=[c.token_ids for c in completions],
            old_logprobs=[c.logprobs for c in completions],
            advantages=adv.tolist(),
            sample_mask=mask.tolist(),
            example_indices=[e.index for e in examples],
            stats=stats,
        )

    def _draw(self, n: int, examples: list[Example]) -> list[list[int]]:
        """The next ``n`` usable prompts (too-long ones skipped and counted)."""
        fresh: list[list[int]] = []
        limit = self.spec.training.max_prompt_tokens
        while len(fresh) < n:
            for e in self.sampler.take(n - len(fresh)):
                ids = self.encode_prompt(e.prompt)
                if len(ids) > limit:
                    self.metrics.skipped_prompts.inc()
                    continue
                fresh.append(ids)
                examples.append(e)
        return fresh

    def _score(
        self, examples: list[Example], completions: list[Any]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        g = self.spec.algorithm.group_size
        lr = self.spec.algorithm.length_reward
        texts = [self.tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
        return score(
            prompts=[examples[i // g].prompt for i in range(len(completions))],
            completions=texts,
            answers=[examples[i // g].answer for i in range(len(completions))],
            lengths=[len(c.token_ids) for c in completions],
            group_size=g,
            rewards=self._reward_terms(),
            length_reward=(
                lr.type,
                lr.coefficient,
                lr.max_tokens or self.spec.training.max_completion_tokens,
                lr.buffer_tokens,
            ),
        )

    # ----------------------------------------------------------------- every rank: update
    def train_step(self, batch: Batch) -> dict[str, float]:
        """Loss, backward and optimizer step on this rank's slice of the batch."""
        algo = self.spec.algorithm
        tokens, seqs = batch.valid_counts()
        mine = batch.shard(self.rt.rank, self.rt.world_size)
        temperature = self.spec.training.temperature
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        agg: dict[str, float] = {}
        mb = self.rt.micro_batch_size
        chunks = [range(i, min(i + mb, len(mine))) for i in range(0, len(mine), mb)]
        for k, idx in enumerate(chunks):
            seq = [mine.prompt_ids[i] + mine.completion_ids[i] for i in idx]
            ids, attn = pad(seq, self.tokenizer.pad_token_id or 0, self.device)
            plen = [len(mine.prompt_ids[i]) for i in idx]
            clen = [len(mine.completion_ids[i]) for i in idx]
            tmax = max(clen)
            resp_mask = torch.zeros(len(idx), tmax, dtype=torch.bool, device=self.device)
            comp = torch.zeros(len(idx), tmax, dtype=torch.long, device=self.device)
            old = torch.zeros(len(idx), tmax, dtype=torch.float32, device=self.device)
            gather_pos = torch.zeros(len(idx), tmax, dtype=torch.long, device=self.device)
            for r, i in enumerate(idx):
                n = clen[r]
                resp_mask[r, :n] = True
                comp[r, :n] = torch.tensor(mine.completion_ids[i])
                old[r, :n] = torch.tensor(mine.old_logprobs[i])
                # logits at position p predict token p + 1
                gather_pos[r, :n] = torch.arange(plen[r] - 1, plen[r] - 1 + n)
                gather_pos[r, n:] = plen[r] - 1
            ctx = (
                self.model.no_sync()
                if (k < len(chunks) - 1 and hasattr(self.model, "no_sync"))
                else contextlib.nullcontext()
            )
            with ctx:
                logits = self.model(input_ids=ids, attention_mask=attn).logits
                logits = torch.gather(
                    logits, 1, gather_pos.unsqueeze(-1).expand(-1, -1, logits.size(-1))
                )
                logits = logits.float() / temperature  # vLLM's processed log-probs use T too
                logp = token_logprobs(logits, comp)
                ref = None
                if self.ref_model is not None:
                    with torch.no_grad():
                        rl = self.ref_model(input_ids=ids, attention_mask=attn).logits
                        rl = torch.gather(
                            rl, 1, gather_pos.unsqueeze(-1).expand(-1, -1, rl.size(-1))
                        )
                        ref = token_logprobs(rl.float() / temperature, comp)
                adv = torch.tensor([mine.advantages[i] for i in idx], device=self.device)
                smask = torch.tensor([mine.sample_mask[i] for i in idx], device=self.device)
                loss, m = compute_policy_loss(
                    logp,
                    old,
                    adv,
                    resp_mask,
                    clip_low=algo.clip.low,
                    clip_high=algo.clip.high,
                    ref_logprobs=ref,
                    kl_coef=algo.kl_coefficient,
                    aggregation=algo.loss_aggregation,
                    sample_mask=smask,
                    max_tokens=self.spec.training.max_completion_tokens,
                    logits=logits.detach(),
                )
                # Reweight the micro-batch's mean to the global denominator; DDP averages
                # gradients over ranks, hence the world size.
                local_tokens = int((resp_mask & smask.unsqueeze(1)).sum())
                local_seqs = int(smask.sum())
                share = (
                    local_tokens / max(tokens, 1)
                    if algo.loss_aggregation == "token-mean"
                    else local_seqs / max(seqs, 1)
                )
                (loss * share * self.rt.world_size).backward()
            for key, v in m.items():
                agg[key] = agg.get(key, 0.0) + v * share
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.spec.training.max_grad_norm
        )
        self.optimizer.step()
        self.scheduler.step()
        agg = all_reduce_sum(agg, self.device)
        agg["grad_norm"] = float(grad_norm)
        agg["learning_rate"] = self.scheduler.get_last_lr()[0]
        return agg

    # ----------------------------------------------------------------- the loop
    def run(self) -> None:
        spec = self.spec
        weights = self.gather_weights()
        if self.is_main:
            self.connect()
            self.board.update(phase="Running", policyVersion=self.policy_version)
            self.push_weights(weights)  # servers start from the trainer's weights (resume too)
        every_sync = spec.rollout.weight_sync.every_steps
        ck = spec.training.checkpoint
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            batch = self.rollout() if self.is_main else None
            batch = broadcast_object(batch, self.rt.rank)
            t1 = time.perf_counter()
            m = self.train_step(batch)
            m["train_seconds"] = time.perf_counter() - t1
            self.step += 1
            self.policy_version += 1
            sync_s = 0.0
            if self.step % every_sync == 0 or self.step == self.total_steps:
                weights = self.gather_weights()
                if self.is_main:
                    sync_s = self.push_weights(weights)
            if self.step % ck.every_steps == 0 or self.step == self.total_steps:
                self.save()
            if self.is_main:
                self.report(batch, m, time.perf_counter() - t0, sync_s)
            if self.is_main and self.step == self.rt.crash_after_step:
                log.warning("AGPO_CRASH_AFTER_STEP=%d: killing the trainer group", self.step)
                os.killpg(os.getpgid(0), signal.SIGKILL)
        if self.is_main:
            self.board.update(phase="Succeeded")

    def save(self) -> None:
        # With FSDP every rank takes part in gathering; rank 0 writes.
        full = self.gather_weights()
        optimizer = self.optimizer_state()
        if self.is_main:
            state = {
                "optimizer": optimizer,
                "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "rng": rng_state(),
            }
            path = save_checkpoint(
                self.rt.checkpoint_dir,
                meta=CheckpointMeta(self.step, self.policy_version, self.job.metadata.name or ""),
                model=self.module,
                weights=full,
                tokenizer=self.tokenizer,
                state=state,
                keep=self.spec.training.checkpoint.keep,
            )
            log.info("checkpoint %s", path)
        barrier()

    def report(self, batch: Batch, m: dict[str, float], step_s: float, sync_s: float) -> None:
        s, mt = batch.stats, self.metrics
        mt.steps.inc()
        mt.policy_version.set(self.policy_version)
        mt.reward_mean.set(s["reward_mean"])
        mt.reward_std.set(s["reward_std"])
        mt.accuracy.set(s["accuracy"])
        mt.zero_variance.set(s["zero_variance_fraction"])
        mt.tokens_mean.set(s["completion_tokens_mean"])
        mt.clipped_ratio.set(s["clipped_ratio"])
        mt.loss.set(m.get("loss", 0.0))
        mt.kl.set(m.get("kl", 0.0))
        mt.entropy.set(m.get("entropy", 0.0))
        mt.clip_ratio.set(m.get("clip_ratio/low_mean", 0.0) + m.get("clip_ratio/high_mean", 0.0))
        mt.grad_norm.set(m["grad_norm"])
        mt.learning_rate.set(m["learning_rate"])
        mt.step_duration.observe(step_s)
        mt.rollout_duration.observe(s["rollout_seconds"])
        mt.rollout_tokens.inc(s["rollout_tokens"])
        for k, v in s.items():
            if k.startswith("reward/"):
                mt.reward_component.labels(reward=k.split("/", 1)[1]).set(v)
        record = {
            "step": self.step,
            "totalSteps": self.total_steps,
            "policyVersion": self.policy_version,
            "rewardMean": s["reward_mean"],
            "accuracy": s["accuracy"],
            "completionTokensMean": s["completion_tokens_mean"],
            "zeroVarianceFraction": s["zero_variance_fraction"],
            "resampleRounds": s["resample_rounds"],
            "loss": m.get("loss", 0.0),
            "ratioMean": m.get("ratio/mean", 1.0),
            "kl": m.get("kl", 0.0),
            "clipRatio": m.get("clip_ratio/low_mean", 0.0) + m.get("clip_ratio/high_mean", 0.0),
            "gradNorm": m["grad_norm"],
            "stepSeconds": step_s,
            "rolloutSeconds": s["rollout_seconds"],
            "rewardSeconds": s["reward_seconds"],
            "trainSeconds": m["train_seconds"],
            "weightSyncSeconds": sync_s,
            "prompts": batch.example_indices,
        }
        self.board.update(**record)
        log.info("step %s", json.dumps(record))  # "prompts" last: long


# --------------------------------------------------------------------------- helpers
def _groups_with_variance(rewards: Tensor, g: int) -> list[int]:
    grouped = rewards.view(-1, g)
    spread = grouped.max(dim=1).values - grouped.min(dim=1).values
    return [i for i, v in enumerate(spread.tolist()) if v > 1e-6]


def select_groups(rewards: Tensor, group_size: int, want: int) -> list[int]:
    """DAPO dynamic sampling's choice of ``want`` groups out of everything drawn.

    Groups with reward variance come first (in draw order), then zero-variance groups fill
    the batch; the indices are returned sorted, so the batch keeps the draw order.
    """
    varied = _groups_with_variance(rewards, group_size)
    taken = set(varied)
    rest = [i for i in range(rewards.numel() // group_size) if i not in taken]
    return sorted((varied + rest)[:want])


def pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Right-padded ids and attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
    return ids.to(device), attn.to(device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, rank: int) -> Any:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))
