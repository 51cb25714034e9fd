"""Gate for the starting point of the ``wordmath`` task on SmolLM2-135M-Instruct: which chat
(system prompt, example turns) and whether a format warm-up, chosen with figures.

    flock /tmp/agpo-heavy.lock nice -n 10 .venv/bin/python study/wordmath_gate.py \\
        --model /tmp/smollm2-hf --candidates turns2,sys-turns2,sys-turns4
    flock /tmp/agpo-heavy.lock nice -n 10 .venv/bin/python study/wordmath_gate.py \\
        --model /tmp/smollm2-hf --candidates sys-warmup16
    .venv/bin/python study/wordmath_gate.py --summary   # the log as a markdown table

For each candidate: 1. the format warm-up when it has one (the task's recipe,
``wordmath.WARMUP_RECIPE`` and ``wordmath.warmup_batches``, on the ``warmup`` split only,
trained here as ``agpo_trainer.warmup`` trains it: cross-entropy on the completion tokens and
EOS, its own AdamW; the warmed model is cached in ``/tmp/wordmath-gate/`` by a hash of the
recipe, steps, seed and chat), 2. ``PROMPTS`` rows of the ``eval`` split (``wordmath.eval_rows``:
the same number per bucket) through the chat template as the trainer encodes them
(``agpo_trainer.prompts.PromptEncoder``), sampled with vLLM offline at T=1, G=8 (and greedy,
informational), ``MAX_TOKENS`` tokens, 3. the figures and a PASS/FAIL per rule, 4. a record
appended to ``study/wordmath_gate_log.jsonl``.

The rules and the choice among candidates below were fixed (and committed) before any figure
was measured. Never run by pytest: it is a command (minutes of CPU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agpo_trainer.tasks import wordmath as task

# ------------------------------------------------------------------ decision rules (fixed)
ACC_RANGE = (0.20, 0.60)  # mean sampled accuracy on eval (T=1, G=8)
ZERO_VAR_RANGE = (0.20, 0.60)  # fraction of groups with zero reward variance
ALL_CORRECT_MIN = 0.05  # fraction of groups all correct
ALL_WRONG_MIN = 0.05  # fraction of groups all wrong
FORMAT_MIN = 0.80  # samples whose last `Answer:` line holds a number (grade().answer not None)
SPREAD_MIN = 0.20  # accuracy(buckets EASY) - accuracy(buckets HARD)
EASY, HARD = (1, 2), (5, 6)
#: The choice: among the candidates that pass every rule, the one with the fewest prompt tokens
#: (an RL step's cost on this CPU grows with them), a tie going to the accuracy nearer 0.4;
#: when none passes, none is chosen (the report says which rules failed, and a new candidate
#: is added to CANDIDATES and run, the rules unchanged).
SELECTION = "fewest prompt tokens among those passing every rule (tie: accuracy nearer 0.4)"

GROUP = 8
TEMPERATURE = 1.0
PROMPTS = 72  # eval rows, 12 per bucket
MAX_TOKENS = 128  # maxCompletionTokens: a worked solution is 10-40 tokens
SEED = 0
LOG = Path(__file__).with_name("wordmath_gate_log.jsonl")
CACHE = Path(os.environ.get("WORDMATH_GATE_CACHE", "/tmp/wordmath-gate"))


@dataclass(frozen=True)
class Candidate:
    """A starting point: the chat (system prompt or the template's default, k example turns)
    and the format warm-up steps (0: none)."""

    system: bool  # wordmath.SYSTEM_PROMPT (False: the chat template's default system turn)
    turns: int  # wordmath.example_turns(turns)
    warmup_steps: int = 0

    def dataset(self) -> dict[str, Any]:
        """``spec.dataset`` of this candidate."""
        out: dict[str, Any] = {"source": {"builtin": {"task": task.NAME}}}
        if self.system:
            out["systemPrompt"] = task.SYSTEM_PROMPT
        if self.turns:
            out["exampleTurns"] = task.example_turns(self.turns)
        return out


#: Fixed before the figures. ``sys-turns2-warmup16`` is run only if none of the others passes.
CANDIDATES: dict[str, Candidate] = {
    "turns2": Candidate(system=False, turns=2),
    "sys-turns2": Candidate(system=True, turns=2),
    "sys-turns4": Candidate(system=True, turns=4),
    "sys-warmup16": Candidate(system=True, turns=0, warmup_steps=16),
    "sys-turns2-warmup16": Candidate(system=True, turns=2, warmup_steps=16),
}


# ------------------------------------------------------------------ warm-up
def warm_key(c: Candidate) -> str:
    key = {"recipe": task.WARMUP_RECIPE, "steps": c.warmup_steps, "seed": SEED,
           "dataset": c.dataset()}  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def warm_up(model_dir: str, c: Candidate) -> tuple[str, dict[str, Any]]:
    """The warmed model's directory (cached), and the warm-up's figures."""
    target = CACHE / f"warm-{warm_key(c)}"
    if (target / "warmup.json").exists():
        return str(target), json.loads((target / "warmup.json").read_text()) | {"cached": True}
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agpo_api.models import DatasetSpec
    from agpo_trainer.prompts import PromptEncoder

    torch.manual_seed(SEED)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    encode = PromptEncoder(tok, DatasetSpec.model_validate(c.dataset()))
    r = task.WARMUP_RECIPE
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=r["lr"], betas=r["betas"], weight_decay=0.0)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    t0, losses = time.time(), []
    model.train()
    for step, batch in enumerate(task.warmup_batches(c.warmup_steps, SEED), start=1):
        prompts = [encode(p) for p, _ in batch]
        seqs = [q + tok.encode(s, add_special_tokens=False) + [eos]
                for q, (_, s) in zip(prompts, batch, strict=True)]  # fmt: skip
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        target_ids = ids[:, 1:]
        mask = torch.zeros_like(target_ids, dtype=torch.bool)
        for i, (q, s) in enumerate(zip(prompts, seqs, strict=True)):
            mask[i, len(q) - 1 : len(s) - 1] = True
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), target_ids, reduction="none"
        )
        loss = (nll * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, r["clip"])
        for g in opt.param_groups:
            g["lr"] = r["lr"] * min(1.0, step / r["lr_warmup"])
        opt.step()
        losses.append(round(float(loss.detach()), 4))
        print(f"warm-up step {step}: loss {losses[-1]:.3f} ({time.time() - t0:.0f} s)", flush=True)
    meta = {"steps": c.warmup_steps, "seconds": round(time.time() - t0, 1), "losses": losses}
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "warmup.json").write_text(json.dumps(meta))
    os.replace(tmp, target)
    return str(target), meta | {"cached": False}


# ------------------------------------------------------------------ sampling and figures
def sample(llm: Any, tok: Any, c: Candidate, rows: list[dict[str, str]]) -> dict[str, Any]:
    """T=1 (G=8) and greedy completions of every row, graded; the figures."""
    from vllm import SamplingParams

    from agpo_api.models import DatasetSpec
    from agpo_trainer.prompts import PromptEncoder

    encode = PromptEncoder(tok, DatasetSpec.model_validate(c.dataset()))
    ids = [encode(r["prompt"]) for r in rows]
    prompts = [{"prompt_token_ids": q} for q in ids]
    t0 = time.time()
    sampled = llm.generate(
        prompts,
        [
            SamplingParams(
                n=GROUP,
                temperature=TEMPERATURE,
                top_p=1.0,
                max_tokens=MAX_TOKENS,
                seed=SEED + 1000 + i,
            )
            for i in range(len(rows))
        ],
        use_tqdm=False,
    )
    t_sample = time.time() - t0
    greedy = llm.generate(
        prompts, SamplingParams(n=1, temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False
    )
    t_greedy = time.time() - t0 - t_sample
    groups, tokens, fmt, finished, reasoning, agree, examples = [], [], [], [], [], [], []
    from agpo_trainer.rewards.accuracy import answer_is_correct

    for row, out in zip(rows, sampled, strict=True):
        group = []
        for o in out.outputs:
            text = tok.decode(list(o.token_ids), skip_special_tokens=True)
            done = o.finish_reason == "stop"
            g = task.grade(row["prompt"], text, row["answer"], finished=done)
            group.append(g.correct)
            tokens.append(len(o.token_ids))
            fmt.append(g.answer is not None)
            finished.append(done)
            agree.append(g.correct == (done and answer_is_correct(text, row["answer"])))
            if g.correct:
                reasoning.append(len(tok.encode(g.reasoning, add_special_tokens=False)))
        groups.append(group)
        if len(examples) < 12 and len(groups) % 6 == 1:
            examples.append({"prompt": row["prompt"], "answer": row["answer"],
                             "completion": tok.decode(list(out.outputs[0].token_ids),
                                                      skip_special_tokens=True)})  # fmt: skip
    greedy_ok = [
        task.grade(
            r["prompt"],
            tok.decode(list(o.outputs[0].token_ids), skip_special_tokens=True),
            r["answer"],
            finished=o.outputs[0].finish_reason == "stop",
        ).correct
        for r, o in zip(rows, greedy, strict=True)
    ]
    by_bucket: dict[int, list[bool]] = {}
    greedy_bucket: dict[int, list[bool]] = {}
    for r, g, ok in zip(rows, groups, greedy_ok, strict=True):
        by_bucket.setdefault(int(r["difficulty"]), []).extend(g)
        greedy_bucket.setdefault(int(r["difficulty"]), []).append(ok)
    flat = [x for g in groups for x in g]
    all_c = sum(all(g) for g in groups) / len(groups)
    all_w = sum(not any(g) for g in groups) / len(groups)
    easy = [x for d in EASY for x in by_bucket.get(d, [])]
    hard = [x for d in HARD for x in by_bucket.get(d, [])]
    return {
        "prompts": len(rows),
        "samples": len(flat),
        "prompt_tokens_mean": statistics.fmean(map(len, ids)),
        "accuracy": statistics.fmean(flat),
        "zero_var": all_c + all_w,
        "all_correct": all_c,
        "all_wrong": all_w,
        "format": statistics.fmean(fmt),
        "spread": statistics.fmean(easy) - statistics.fmean(hard),
        "finished": statistics.fmean(finished),
        "completion_tokens_mean": statistics.fmean(tokens),
        "correct_reasoning_tokens_mean": statistics.fmean(reasoning) if reasoning else None,
        "accuracy_reward_agrees": statistics.fmean(agree),
        "acc_by_bucket": {d: round(statistics.fmean(v), 3) for d, v in sorted(by_bucket.items())},
        "greedy_accuracy": statistics.fmean(greedy_ok),
        "greedy_by_bucket": {
            d: round(statistics.fmean(v), 3) for d, v in sorted(greedy_bucket.items())
        },
        "sample_seconds": round(t_sample, 1),
        "greedy_seconds": round(t_greedy, 1),
        "examples": examples,
    }


def verdicts(f: dict[str, Any]) -> dict[str, bool]:
    def inside(x: float, lo_hi: tuple[float, float]) -> bool:
        return lo_hi[0] <= x <= lo_hi[1]

    return {
        "accuracy (T=1)": inside(f["accuracy"], ACC_RANGE),
        "zero-variance groups": inside(f["zero_var"], ZERO_VAR_RANGE),
        "all-correct groups": f["all_correct"] >= ALL_CORRECT_MIN,
        "all-wrong groups": f["all_wrong"] >= ALL_WRONG_MIN,
        "format followed": f["format"] >= FORMAT_MIN,
        "spread acc(1-2) - acc(5-6)": f["spread"] >= SPREAD_MIN,
    }


RULES = {
    "accuracy (T=1)": ("accuracy", f"{ACC_RANGE[0]}-{ACC_RANGE[1]}"),
    "zero-variance groups": ("zero_var", f"{ZERO_VAR_RANGE[0]}-{ZERO_VAR_RANGE[1]}"),
    "all-correct groups": ("all_correct", f">= {ALL_CORRECT_MIN}"),
    "all-wrong groups": ("all_wrong", f">= {ALL_WRONG_MIN}"),
    "format followed": ("format", f">= {FORMAT_MIN}"),
    "spread acc(1-2) - acc(5-6)": ("spread", f">= {SPREAD_MIN}"),
}


def environment() -> dict[str, Any]:
    import torch
    import transformers
    import vllm

    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    return {"git": sha.strip(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "vllm": vllm.__version__,
            "cpus": os.cpu_count(), "load": os.getloadavg()}  # fmt: skip


def run(model_dir: str, names: list[str], log: bool) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "3")
    from transformers import AutoTokenizer
    from vllm import LLM

    rows = task.eval_rows(PROMPTS)
    warm: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for name in names:
        c = CANDIDATES[name]
        warm[name] = warm_up(model_dir, c) if c.warmup_steps else (model_dir, None)
    for served in dict.fromkeys(d for d, _ in warm.values()):
        t0 = time.time()
        llm = LLM(model=served, dtype="float32", enforce_eager=True, max_model_len=1024,
                  enable_chunked_prefill=False, enable_prefix_caching=True,
                  gpu_memory_utilization=0.3, seed=SEED)  # fmt: skip
        t_start = time.time() - t0
        tok = AutoTokenizer.from_pretrained(served)
        for name in [n for n in names if warm[n][0] == served]:
            c = CANDIDATES[name]
            t1 = time.time()
            f = sample(llm, tok, c, rows)
            v = verdicts(f)
            record = {
                "candidate": name, "config": asdict(c), "model": model_dir, "warmup": warm[name][1],
                "group": GROUP, "temperature": TEMPERATURE, "max_tokens": MAX_TOKENS,
                "engine_start_seconds": round(t_start, 1), "seconds": round(time.time() - t1, 1),
                "figures": f, "verdicts": v, "pass": all(v.values()), "env": environment(),
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            }  # fmt: skip
            print_record(record)
            if log:
                with LOG.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
        del llm


def print_record(r: dict[str, Any]) -> None:
    f = r["figures"]
    print(f"\nwordmath gate: {r['candidate']} {r['config']}  ({r['seconds']} s)")
    print(f"{'criterion':30} {'value':>7}  {'rule':>10}  verdict")
    for name, ok in r["verdicts"].items():
        key, rule = RULES[name]
        print(f"{name:30} {f[key]:7.3f}  {rule:>10}  {'PASS' if ok else 'FAIL'}")
    print(f"acc by bucket {f['acc_by_bucket']}; greedy {f['greedy_accuracy']:.3f} "
          f"{f['greedy_by_bucket']}; finished {f['finished']:.3f}; completion tokens "
          f"{f['completion_tokens_mean']:.1f}; prompt tokens {f['prompt_tokens_mean']:.1f}; "
          f"accuracy reward agrees {f['accuracy_reward_agrees']:.3f}")  # fmt: skip
    for e in f["examples"][:3]:
        print(f"--- {e['prompt']} ({e['answer']})\n{e['completion']}")


def summary(path: Path = LOG) -> str:
    """The log as a markdown table (one row per candidate run), for docs/results.md."""
    head = (
        "| candidate | warm-up | prompt tok | acc T=1 | zero-var | all-correct | all-wrong "
        "| format | spread | finished | compl. tok | greedy | acc by bucket 1..6 | gate |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        f, w = r["figures"], r["warmup"]
        fails = [k for k, ok in r["verdicts"].items() if not ok]
        warm = f"{w['steps']} steps ({w['seconds']:.0f} s)" if w else "-"
        buckets = " / ".join(f"{v:.2f}" for v in f["acc_by_bucket"].values())
        lines.append(
            f"| {r['candidate']} | {warm} | {f['prompt_tokens_mean']:.0f} | {f['accuracy']:.3f} "
            f"| {f['zero_var']:.3f} | {f['all_correct']:.3f} | {f['all_wrong']:.3f} "
            f"| {f['format']:.3f} | {f['spread']:.3f} | {f['finished']:.3f} "
            f"| {f['completion_tokens_mean']:.1f} | {f['greedy_accuracy']:.3f} | {buckets} "
            f"| {'PASS' if r['pass'] else 'FAIL: ' + ', '.join(fails)} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="/tmp/smollm2-hf", help="the converted model directory")
    ap.add_argument("--candidates", default="turns2,sys-turns2,sys-turns4")
    ap.add_argument("--no-log", action="store_true")
    ap.add_argument("--summary", action="store_true")
    args = ap.parse_args(argv)
    if args.summary:
        print(summary(), end="")
        return 0
    names = args.candidates.split(",")
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        print(f"unknown candidates {unknown}; valid: {', '.join(CANDIDATES)}", file=sys.stderr)
        return 2
    run(args.model, names, not args.no_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
