"""Benchmark: seconds per example of the online Flow-DPO loop on vLLM vs the transformers engine.

The real loop (``python -m flowcore train``), the same N GSM8K training examples (the first N of the
seeded order), the paper's flow settings (chunk 160, max 6 steps, 1 rollout per node) and the DPO
settings of ``runs/gsm8k-qwen0.5b-400``, once with ``--engine hf`` and once with ``--engine vllm``,
one after the other, each in its own process, in temporary run directories. Prints and writes
(``--out``, JSON) each run's seconds per example (the loop's own clock from ``progress.jsonl``,
engine start excluded), wall seconds (start included), tokens, pairs and steps, and the ratio
hf/vllm, with the machine's CPU flags, dtype, threads, load average and commit.

    python bench/bench_online_engines.py --examples 8 --out bench/results/online_vllm_vs_hf.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_vllm import cpu_flags  # noqa: E402

# the DPO settings of runs/gsm8k-qwen0.5b-400 (its config.json), the paper's flow settings
SETTINGS = ["--dataset", "gsm8k", "--chunk-size", "160", "--max-steps", "6", "--rollouts", "1",
            "--lr", "5e-5", "--batch-pairs", "16", "--batch-size", "64"]


def run(engine: str, args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "flowcore", "train", "--engine", engine, "--model", args.model,
           "--examples", str(args.examples), "--group-size", str(args.group_size), "--dtype", args.dtype,
           "--checkpoint-every", str(args.examples), *SETTINGS, "--out", str(out)]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        raise SystemExit(f"{engine} run failed:\n{r.stderr[-3000:]}")
    syncs = re.search(r"(\d+) adapter syncs in ([\d.]+) s", r.stdout + r.stderr)
    calls = re.search(r": (\d+) tokens generated, Answer calls ([\d.]+) s, Stop calls ([\d.]+) s", r.stdout + r.stderr)
    rows = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    loop = rows[-1]["elapsed"]
    return {"engine": engine, "wall_seconds": round(wall, 1), "loop_seconds": round(loop, 1),
            "s_per_example": round(loop / len(rows), 2), "start_seconds": round(wall - loop, 1),
            "examples": len(rows), "correct": sum(x["correct"] for x in rows),
            "tokens": sum(x["n_tokens"] for x in rows), "rollouts": sum(x["n_rollouts"] for x in rows),
            "pairs": sum(x["n_answer_pairs"] + x["n_stop_pairs"] for x in rows),
            "steps": sum(len(x["losses"]) for x in rows),
            "adapter_syncs": int(syncs.group(1)) if syncs else 0,
            "sync_seconds": float(syncs.group(2)) if syncs else 0.0,
            # everything the engine decoded (flows, rollouts, counterfactuals) and the time in its two calls
            "generated_tokens": int(calls.group(1)), "answer_seconds": float(calls.group(2)),
            "stop_seconds": float(calls.group(3)),
            "runtime": json.loads((out / "config.json").read_text())["runtime"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--examples", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8, help="examples per round (the 400 run: 32)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {e: run(e, args, Path(tmp) / e) for e in ("hf", "vllm")}
    for r in runs.values():
        print(f"{r['engine']:5s} {r['s_per_example']:7.2f} s/example (loop), wall {r['wall_seconds']} s "
              f"(start {r['start_seconds']} s), {r['tokens']} flow tokens, {r['generated_tokens']} generated "
              f"({r['generated_tokens'] / r['answer_seconds']:.1f} tok/s in Answer calls, Stop calls "
              f"{r['stop_seconds']} s), {r['pairs']} pairs, {r['steps']} steps")
    ratio = runs["hf"]["s_per_example"] / runs["vllm"]["s_per_example"]
    print(f"vLLM / hf speed-up per example: {ratio:.2f}x")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    record = {"command": "python bench/bench_online_engines.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "git_commit": commit,
              "machine": {"cpu_flags": cpu_flags(), "cores": os.cpu_count()},
              "settings": {**vars(args), "train_flags": SETTINGS}, "dtype": args.dtype,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "runs": runs, "speedup_vllm_over_hf": round(ratio, 3)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
