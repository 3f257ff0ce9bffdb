"""Benchmark: examples/hour of the online Flow-DPO loop vs a naive loop, and peak memory.

    python bench/bench_online.py --model smollm2-135m-instruct --examples 4 --chunk-size 32 --max-steps 3

- **batched**: the real loop, ``flowcore.online.train.train`` (all flows of a round in
  one engine batch, then all their rollouts and "continue" counterfactuals in
  one continuously batched run), with ``group_size`` = the number of examples.
- **naive**: one example at a time; its flow alone, then each rollout (and each
  counterfactual) generated on its own, batch size 1, no KV cache kept between
  chunks (every generate call encodes its whole input).

Both use the same model, flow settings, examples, pair rules
(``rollouts.answer_pair`` / ``rollouts.stop_pairs``) and DPO update
(``dpo.OnlineDPO``, steps every ``batch_pairs`` pairs, last partial batch at
the end). Each mode runs in its own process so its peak RSS is its own. The
pairs made differ between modes (sampling), so the script also prints
generated tokens; the figure of merit is examples/hour.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def naive_loop(net, tok, problems, flow, dpo):
    import torch
    from tqdm import tqdm

    from flowcore import adapters
    from flowcore.online.dpo import OnlineDPO
    from flowcore.flow.engine import FlowEngine, FlowState
    from flowcore.adapters import ROLES
    from flowcore.online.rollouts import answer_pair, stop_pairs

    torch.manual_seed(dpo.seed)
    peft = adapters.attach(net, adapters.lora_config(dpo))
    peft.eval()
    trainer = OnlineDPO(peft, tok.pad_token_id, dpo)
    engine = FlowEngine(peft, tok, flow)  # every generate call encodes its whole input
    pending, n_pairs = {r: [] for r in ROLES}, 0
    for i, problem in enumerate(tqdm(problems, desc="naive loop", unit="example")):
        state = FlowState(problem)
        for _ in engine.run([state]):
            pass
        trace = engine.trace(state)
        pairs = []
        for k, chunk in enumerate(state.chunks):
            for _ in range(dpo.rollouts):
                b = engine.branch(state, k)
                engine.step([b], avoid=[chunk.token_ids], temperature=dpo.rollout_temperature)
                for _ in engine.run([b]):
                    pass
                _, pair = answer_pair(engine, state, trace, k, b)
                pairs += [pair] if pair else []
        continued = None
        if state.end_reason == "stop" and len(state.chunks) < flow.max_steps:
            continued = engine.branch(state, len(state.chunks))
            for _ in engine.run([continued]):
                pass
        pairs += stop_pairs(engine, state, trace, continued)
        n_pairs += len(pairs)
        for p in pairs:
            pending[p.role].append(p)
        for role in ROLES:
            while len(pending[role]) >= dpo.batch_pairs:
                batch, pending[role] = pending[role][:dpo.batch_pairs], pending[role][dpo.batch_pairs:]
                trainer.update(role, batch)
            if i == len(problems) - 1 and pending[role]:
                trainer.update(role, pending[role])
    return n_pairs, engine.stats["generated_tokens"], engine.stats["decoded_row_tokens"]


def one_mode(args) -> dict:
    import torch

    from flowcore import data, models
    from flowcore.online.dpo import OnlineDPOConfig
    from flowcore.flow.engine import FlowConfig
    from flowcore.online.processes import Processes
    from flowcore.online.train import example_order, train

    problems = example_order(data.load("gsm8k", "train"), args.examples, 0)
    flow = FlowConfig(chunk_size=args.chunk_size, max_steps=args.max_steps, batch_size=args.batch_size)
    dpo = OnlineDPOConfig(group_size=args.examples, batch_pairs=args.batch_pairs, checkpoint_every=10**6)
    net, tok = models.load(args.model)
    t0 = time.time()
    if args.mode == "naive":
        n_pairs, tokens, row_tokens = naive_loop(net, tok, problems, flow, dpo)
    else:
        with tempfile.TemporaryDirectory() as run:
            summary = train(net, tok, problems, Path(run), flow, dpo, Processes())
        n_pairs, tokens, row_tokens = summary["pairs"], summary["generated_tokens"], summary["decoded_row_tokens"]
    seconds = time.time() - t0
    return {"mode": args.mode, "examples": args.examples, "seconds": round(seconds, 1),
            "examples_per_hour": round(3600 * args.examples / seconds, 1), "pairs": n_pairs,
            "generated_tokens": tokens,
            "decode_use": round(tokens / row_tokens, 3) if row_tokens else None,  # generated / rows x positions decoded
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "torch_threads": torch.get_num_threads(), "dtype": str(next(net.parameters()).dtype)}


def main() -> int:
    from flowcore.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--examples", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batch-pairs", type=int, default=32)
    p.add_argument("--mode", choices=("both", "batched", "naive"), default="both")
    p.add_argument("--parallel", action="store_true",
                   help="run the two modes at the same time, one thread each (for a 2-core machine: each mode has "
                        "one core and the other mode as its neighbour; half the wall time)")
    args = p.parse_args()
    if args.mode != "both":
        print("RESULT " + json.dumps(one_mode(args)), flush=True)
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"OMP_NUM_THREADS": "1"} if args.parallel else {})}
    argv = [a for a in sys.argv[1:] if a != "--parallel"]
    with tempfile.TemporaryDirectory() as logs, contextlib.ExitStack() as files:
        jobs = {}
        for mode in ("batched", "naive"):  # output to files: a full pipe would stall a parallel job
            out, err = (files.enter_context(open(Path(logs) / f"{mode}.{kind}", "w+")) for kind in ("out", "err"))
            jobs[mode] = (subprocess.Popen([sys.executable, __file__, *argv, "--mode", mode], env=env, text=True,
                                           stdout=out, stderr=err), out, err)
            if not args.parallel:
                jobs[mode][0].wait()
        rows = {}
        for mode, (job, out, err) in jobs.items():
            job.wait()
            out.seek(0), err.seek(0)
            line = next((x for x in out.read().splitlines() if x.startswith("RESULT ")), None)
            if job.returncode != 0 or line is None:
                print(err.read()[-3000:], file=sys.stderr)
                return 1
            rows[mode] = json.loads(line[len("RESULT "):])
            print(json.dumps(rows[mode]))
    ratio = rows["batched"]["examples_per_hour"] / rows["naive"]["examples_per_hour"]
    print(f"\n{args.model}, {args.examples} GSM8K train examples, chunk_size {args.chunk_size}, max_steps "
          f"{args.max_steps}: batched {rows['batched']['examples_per_hour']} examples/h vs naive "
          f"{rows['naive']['examples_per_hour']} examples/h -> {ratio:.2f}x; peak RSS batched "
          f"{rows['batched']['peak_rss_mb']} MB, naive {rows['naive']['peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
