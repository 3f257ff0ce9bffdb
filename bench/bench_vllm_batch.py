"""Benchmark: vLLM's decoding throughput against the number of rows decoded together (a benchmark, not a test).

The online loop explores ``--group-size`` examples per round in one vLLM batch; this measures what a
larger batch buys on this machine. The base model (no adapter), the first N GSM8K train problems'
Answer prompts, greedy, ``--tokens`` new tokens per row (one flow step, no Stop LLM), one engine, each
batch size once after a warm-up, the prefix cache emptied before each. Prints tokens/s per batch size
and the ratio to the smallest batch (the baseline, same run), and writes them with the machine's CPU
flags, dtype and load average to ``--out`` (JSON).

    python bench/bench_vllm_batch.py --batches 8 16 32 64 --out bench/results/vllm_batch.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_vllm import write_result  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from flowcore import data, results
    from flowcore.flow import engines
    from flowcore.flow.engine import FlowConfig

    def config(rows: int) -> FlowConfig:
        return FlowConfig(chunk_size=args.tokens, max_steps=1, use_stop=False, batch_size=rows)

    problems = data.load("gsm8k", "train", None, "local")[:max(args.batches)]
    load_before = os.getloadavg()
    engine = engines.open_engine(args.model, config(max(args.batches)), dtype=args.dtype, engine="vllm")
    list(engine.solve(problems[:4]))  # warm-up
    rows = []
    for b in sorted(args.batches):
        e = engine.configured(config(b))
        e.new_round()
        t0 = time.perf_counter()
        traces = list(e.solve(problems[:b]))
        seconds = time.perf_counter() - t0
        tokens = sum(t.n_tokens for t in traces)
        rows.append({"rows": b, "tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["ratio_to_smallest"] = round(r["tokens_per_s"] / base, 2)
        print(f"{r['rows']:4d} rows: {r['tokens_per_s']:7.1f} tokens/s  x{r['ratio_to_smallest']:.2f}")
    if args.out:
        write_result(args.out, {"model": args.model, "dtype": str(engine.dtype), "tokens_per_row": args.tokens,
                                "rows": rows, "runtime": results.runtime(engine)}, load_before)

if __name__ == "__main__":
    main()
