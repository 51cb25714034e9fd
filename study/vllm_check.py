"""Distribution check: the study's in-process sampler against vLLM on the same warm model.

    flock /tmp/agpo-heavy.lock nice -n 10 .venv/bin/python study/vllm_check.py [--seed 0] [--config v2]

Takes the warm base of a seed (the task's registered warm-up, as the study loads it; ``--config``
picks the study's edition: ``v2``, the default, ``full`` the first), saves
it as a model directory (``save_pretrained`` weights + the builtin tokenizer), loads it
into vLLM on CPU (offline ``LLM``, float32, eager, the rollout servers' settings, chunked
prefill off), and draws one T=1 completion per prompt for every prompt of the ``eval``
split on both sides (one sample per prompt: the samples are independent). Tests, each
at alpha = 0.01 (PASS when p >= 0.01):

* accuracy and scratch use: two-proportion z-test;
* completion tokens and reasoning tokens of every completion: two-sample Kolmogorov-Smirnov
  (asymptotic p; conservative for integer lengths);

and greedy agreement (the fraction of eval prompts whose greedy completions are identical).
Prints the table and writes ``study/results/vllm-check-<config>-s<seed>.json`` (the first
edition's: ``vllm-check-s<seed>.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ALPHA = 0.01
RESULTS = Path(__file__).resolve().parent / "results"


def two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p) of H0: p1 == p2, pooled variance."""
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def ks_p(a: list[float], b: list[float]) -> tuple[float, float]:
    """(D, asymptotic p) of the two-sample Kolmogorov-Smirnov test."""
    xs = sorted(set(a) | set(b))
    sa, sb = sorted(a), sorted(b)
    import bisect

    d = max(
        abs(bisect.bisect_right(sa, x) / len(sa) - bisect.bisect_right(sb, x) / len(sb)) for x in xs
    )
    ne = len(a) * len(b) / (len(a) + len(b))
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(1.0, max(0.0, p))


def describe(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "n": len(rows),
        "accuracy": statistics.fmean(r["correct"] for r in rows),
        "scratch_use": statistics.fmean(r["used_scratch"] for r in rows),
        "tokens_mean": statistics.fmean(r["tokens"] for r in rows),
        "reasoning_mean": statistics.fmean(r["reasoning"] for r in rows),
        "finished": statistics.fmean(r["finished"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="v2", help="the study configuration (arms.CONFIGS)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from arms import CONFIGS, manifest
    from runner import TASKS, graded, load_policy

    from agpo_api.models import AGPOJob
    from agpo_trainer.rollout.inprocess import InProcessBackend

    if args.config not in CONFIGS:
        ap.error(f"--config: one of {', '.join(sorted(CONFIGS))}")
    t0 = time.time()
    b = CONFIGS[args.config]
    task = TASKS[b.task]
    job = AGPOJob.model_validate(manifest("grpo", args.seed, b))
    work = Path(tempfile.mkdtemp(prefix="agpo-vllm-check-"))
    policy = load_policy(job, work)
    tok, model = policy.tokenizer, policy.module
    model_dir = work / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    probs = task.problems("eval")
    ids = [tok.encode(p.prompt, add_special_tokens=False) for p in probs]
    eos = tok.eos_token_id

    def rows_of(token_lists: list[list[int]], finished: list[bool]) -> list[dict[str, Any]]:
        out = []
        for p, t, f in zip(probs, token_lists, finished, strict=True):
            body = [x for x in t if x != eos]
            g = graded(task, p.prompt, tok.decode(body), f)
            out.append(g | {"tokens": len(body), "finished": f})
        return out

    local = InProcessBackend(model, tok)
    t1 = time.time()
    ours = local.generate(ids, n=1, max_tokens=b.max_tokens, temperature=1.0, seed=4242 + args.seed)
    ours_greedy = local.generate(ids, n=1, max_tokens=b.max_tokens, temperature=0.0, seed=0)
    t_local = time.time() - t1
    ours_rows = rows_of([c.token_ids for c in ours], [not c.truncated for c in ours])

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=str(model_dir), dtype="float32", max_model_len=128, enforce_eager=True,
        gpu_memory_utilization=0.3, enable_chunked_prefill=False, seed=args.seed,
    )  # fmt: skip
    prompts = [TokensPrompt(prompt_token_ids=i) for i in ids]
    t2 = time.time()
    sampled = llm.generate(prompts, SamplingParams(n=1, temperature=1.0, max_tokens=b.max_tokens))
    greedy = llm.generate(prompts, SamplingParams(n=1, temperature=0.0, max_tokens=b.max_tokens))
    t_vllm = time.time() - t2
    v_tokens = [list(o.outputs[0].token_ids) for o in sampled]
    v_fin = [o.outputs[0].finish_reason == "stop" for o in sampled]
    vllm_rows = rows_of(v_tokens, v_fin)
    agree = statistics.fmean(
        [x for x in c.token_ids if x != eos] == [x for x in o.outputs[0].token_ids if x != eos]
        for c, o in zip(ours_greedy, greedy, strict=True)
    )

    n1, n2 = len(ours_rows), len(vllm_rows)
    tests = []
    for key in ("correct", "used_scratch"):
        x1, x2 = sum(r[key] for r in ours_rows), sum(r[key] for r in vllm_rows)
        z, p = two_proportion_p(x1, n1, x2, n2)
        tests.append({"test": f"{key}: two-proportion z", "stat": z, "p": p,
                      "ours": x1 / n1, "vllm": x2 / n2})  # fmt: skip
    for key in ("tokens", "reasoning"):
        d, p = ks_p([r[key] for r in ours_rows], [r[key] for r in vllm_rows])
        tests.append({"test": f"{key}: KS two-sample", "stat": d, "p": p,
                      "ours": statistics.fmean(r[key] for r in ours_rows),
                      "vllm": statistics.fmean(r[key] for r in vllm_rows)})  # fmt: skip
    for t in tests:
        t["pass"] = t["p"] >= ALPHA
    import vllm

    rec = {
        "seed": args.seed,
        "config": args.config,
        "task": b.task,
        "prompts": n1,
        "ours": describe(ours_rows),
        "vllm": describe(vllm_rows),
        "tests": tests,
        "greedy_agreement": agree,
        "pass": all(t["pass"] for t in tests),
        "seconds": {
            "local": round(t_local, 1),
            "vllm": round(t_vllm, 1),
            "total": round(time.time() - t0, 1),
        },
        "versions": {"vllm": vllm.__version__, "torch": torch.__version__},
        "loadavg": os.getloadavg(),
    }
    print(
        f"distribution check, {b.task} ({args.config}), seed {args.seed}: {n1} eval prompts x 1 sample, T=1, max {b.max_tokens} tokens"
    )
    print(f"{'test':32} {'ours':>8} {'vLLM':>8} {'stat':>8} {'p':>8}  verdict")
    for t in tests:
        print(f"{t['test']:32} {t['ours']:8.3f} {t['vllm']:8.3f} {t['stat']:8.3f} {t['p']:8.3f}  "
              f"{'PASS' if t['pass'] else 'FAIL'}")  # fmt: skip
    print(f"greedy completions identical on {agree:.3f} of the prompts")
    print(f"DISTRIBUTION CHECK {'PASS' if rec['pass'] else 'FAIL'} (alpha {ALPHA}); "
          f"in-process {t_local:.1f} s, vLLM {t_vllm:.1f} s; load {os.getloadavg()[0]:.2f}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    name = "" if args.config == "full" else f"{args.config}-"
    (RESULTS / f"vllm-check-{name}s{args.seed}.json").write_text(json.dumps(rec, indent=1))
    return 0 if rec["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
