"""Benchmark: batched flow engine vs one-problem-at-a-time HF generate (a benchmark, not a test).

Runs the same N GSM8K test problems through
  (a) plain ``model.generate``, one problem at a time (the baseline),
  (b) the batched engine in zero-shot mode (same work as (a), batched),
  (c) the batched engine running the full Answer/Stop flow,
all greedy with the same token budget, on one model in one process, and
prints generated tokens/s for each, the ratios against (a), and tokens/s as a
fraction of the matmul roof measured in the same run (a dense 2048^3 matmul
in the model's dtype; decoding costs ~2 x params FLOPs per token).

    python bench/bench_engine.py --model qwen2.5-coder-0.5b-instruct --n 8
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowcore.cli import HelpFormatter
from flowcore import data, models  # noqa: E402
from flowcore.flow.engine import FlowConfig, FlowEngine, zero_shot_config  # noqa: E402


def matmul_roof(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def one_at_a_time(model, tok, engine: FlowEngine, problems, budget: int) -> tuple[int, float]:
    tokens, t0 = 0, time.perf_counter()
    for p in problems:
        ids = torch.tensor([engine.prompt_ids(p)])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget,
                                 do_sample=False, eos_token_id=engine.eos_ids, pad_token_id=tok.pad_token_id)
        tokens += out.shape[1] - ids.shape[1]
    return tokens, time.perf_counter() - t0


def batched(model, tok, cfg: FlowConfig, problems) -> tuple[int, float, float]:
    engine = FlowEngine(model, tok, cfg)
    t0 = time.perf_counter()
    traces = list(engine.solve(problems))
    acc = sum(t.correct for t in traces) / len(traces)
    return engine.stats["generated_tokens"], time.perf_counter() - t0, acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default=models.DEFAULT_MODEL)
    p.add_argument("--n", type=int, default=8, help="GSM8K test problems")
    p.add_argument("--chunk-size", type=int, default=160)
    p.add_argument("--max-steps", type=int, default=2, help="token budget = chunk_size * max_steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="auto", choices=list(models.DTYPES))
    args = p.parse_args()

    model, tok = models.load(args.model, dtype=args.dtype)
    problems = data.load("gsm8k", "test", limit=args.n)
    cfg = FlowConfig(chunk_size=args.chunk_size, max_steps=args.max_steps, batch_size=args.batch_size)
    budget = cfg.chunk_size * cfg.max_steps
    roof = matmul_roof(model.dtype)
    flops_per_token = 2 * sum(p.numel() for p in model.parameters())
    print(f"model {args.model} ({model.dtype}, {torch.get_num_threads()} threads), {args.n} GSM8K test problems, "
          f"budget {budget} tokens, batch {args.batch_size}; matmul roof {roof / 1e9:.0f} GFLOP/s")

    rows = []
    tokens, seconds = one_at_a_time(model, tok, FlowEngine(model, tok, cfg), problems, budget)
    rows.append(("(a) HF generate, one problem at a time", tokens, seconds, None))
    tokens, seconds, acc = batched(model, tok, zero_shot_config(cfg), problems)
    rows.append(("(b) batched engine, zero-shot", tokens, seconds, acc))
    tokens, seconds, acc = batched(model, tok, replace(cfg, use_stop=True), problems)
    rows.append(("(c) batched engine, Answer/Stop flow", tokens, seconds, acc))

    base = rows[0][1] / rows[0][2]
    print(f"{'':42s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>7s} {'x (a)':>6s} {'% roof':>7s} {'acc':>5s}")
    for name, tokens, seconds, acc in rows:
        rate = tokens / seconds
        print(f"{name:42s} {tokens:7d} {seconds:8.1f} {rate:7.1f} {rate / base:6.2f} "
              f"{100 * rate * flops_per_token / roof:6.1f}% {'' if acc is None else f'{100 * acc:4.0f}%'}")


if __name__ == "__main__":
    main()
