"""Benchmark: the flow on vLLM (``--engine vllm``) vs the transformers FlowEngine (a benchmark, not a test).

The same N GSM8K test problems, the same flow settings (paper: chunk 160, max 6 steps, greedy), the
same adapters, in one process (vLLM is in requirements.txt), one engine after
the other:
  (a) ``FlowEngine`` on transformers/peft (the simple reference; the committed result was measured
      while it still kept KV caches between chunks and compacted its calls, before 2026-11-30);
  (b) ``VLLMFlowEngine``: vLLM, both LoRA adapters resident, prefix caching.
Prints generated tokens/s and seconds per problem for each, the ratio (b)/(a), how many flows end
with the same completion, and writes everything with the machine's CPU flags, dtype and load
average to ``--out`` (JSON).

    python bench/bench_vllm.py --model qwen2.5-coder-0.5b-instruct --adapters runs/gsm8k-qwen0.5b-400/adapters \\
        --n 16 --out bench/results/vllm_vs_hf.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_flags() -> list[str]:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("avx", "amx")))


def write_result(path: str, fields: dict, load_before: tuple) -> None:
    """A benchmark's ``fields`` as JSON at ``path``, with the command, machine, load average, date and commit."""
    from flowcore import results

    out = {"command": "python " + " ".join(sys.argv), **fields,
           "machine": {"cpu_flags": cpu_flags(), "cores": os.cpu_count()},
           "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_commit": results.git_commit()}
    Path(path).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


def run(engine, problems) -> dict:
    t0 = time.perf_counter()
    traces = {t.problem_id: t for t in engine.solve(problems)}
    seconds = time.perf_counter() - t0
    tokens = engine.stats["generated_tokens"]
    return {"seconds": round(seconds, 1), "generated_tokens": tokens, "tok_s": round(tokens / seconds, 2),
            "s_per_problem": round(seconds / len(problems), 2),
            "correct": sum(traces[p.id].correct for p in problems),
            "completions": [traces[p.id].completion for p in problems]}


def main() -> int:
    from flowcore.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--adapters", default="runs/gsm8k-qwen0.5b-400/adapters")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=160)
    p.add_argument("--max-steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the transformers engine")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import torch

    from flowcore import adapters, data, models, results
    from flowcore.flow.engine import FlowConfig, FlowEngine
    from flowcore.flow.vllm_engine import VLLMFlowEngine

    torch.set_num_threads(args.threads)
    problems = data.load("gsm8k", "test", args.n)
    cfg = FlowConfig(chunk_size=args.chunk_size, max_steps=args.max_steps, batch_size=args.batch_size)
    report = {"command": "python bench/bench_vllm.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
              "git_commit": results.git_commit(), "machine": {"cpu_flags": cpu_flags(), "cores": os.cpu_count(),
                                                              "platform": platform.platform()},
              "settings": {**vars(args), "flow": cfg.__dict__}, "dtype": args.dtype, "loadavg_before": os.getloadavg()}

    net, tok = models.load(args.model, args.dtype, device="cpu")
    net = adapters.load(net, args.adapters)
    report["hf"] = run(FlowEngine(net, tok, cfg), problems)
    report["hf"]["threads"] = args.threads
    report["loadavg_after_hf"] = os.getloadavg()
    del net
    print(f"transformers: {report['hf']['tok_s']} tok/s, {report['hf']['s_per_problem']} s/problem", flush=True)

    t0 = time.perf_counter()
    engine = VLLMFlowEngine(args.model, cfg, args.adapters, dtype=args.dtype)
    report["vllm_init_seconds"] = round(time.perf_counter() - t0, 1)
    report["vllm"] = run(engine, problems)
    report["loadavg_after_vllm"] = os.getloadavg()
    print(f"vLLM: {report['vllm']['tok_s']} tok/s, {report['vllm']['s_per_problem']} s/problem "
          f"(engine start {report['vllm_init_seconds']} s)")

    report["ratio_tok_s"] = round(report["vllm"]["tok_s"] / report["hf"]["tok_s"], 2)
    report["same_completions"] = sum(a == b for a, b in zip(report["hf"]["completions"], report["vllm"]["completions"]))
    print(f"vLLM / transformers: {report['ratio_tok_s']}x tokens/s; same completions {report['same_completions']}/{args.n}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
