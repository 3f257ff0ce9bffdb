"""`python -m flowcore train`: online Flow-DPO with progressive validation (FLOW-DPO.md section 2).

    python -m flowcore train --model qwen2.5-coder-0.5b-instruct --dataset gsm8k --examples 400 --out runs/NAME
    python -m flowcore train ... --out runs/NAME --resume        # after a kill: continues exactly
    accelerate launch --multi_gpu --num_processes 2 -m flowcore train ...   # data parallel (CPU too)

The loop, per round of examples (``group_size`` per process):

1. ``rollouts.explore``: the flow on each example (its **progressive
   validation** prediction: made before any update that uses its pairs), the
   rollouts, the Answer and Stop pairs.
2. The round's pairs join one queue per adapter (in example order, the same on
   every process); each full batch of ``batch_pairs`` pairs is one DPO step of
   that adapter (``dpo.OnlineDPO``). At the end of the run, leftover pairs make
   one last, smaller step per adapter (ours: no pair is dropped).
3. One line per example goes to ``progress.jsonl`` (index, problem id,
   correct, pairs made, the losses of the steps taken after it, seconds), and
   its pairs (texts, outcomes, reasons) to ``pairs.jsonl``.
4. Every ``checkpoint_every`` examples, ``checkpoint.pt`` is replaced
   atomically (``flowcore.online.checkpoint``: adapters, optimizers, position,
   every random generator of every process, pending pairs) and the adapters
   are exported to ``adapters/``. ``--resume`` reloads it, drops the lines
   written after it and carries on: no example is trained twice or skipped,
   and the files come out as in an uninterrupted run (tested). On another
   machine, without the (uncommittable) ``checkpoint.pt``, it carries on from
   ``adapters/`` instead: not exact, and recorded in ``resumes.jsonl``.

Progressive validation with rounds: an example is predicted by the adapters as
they were at the start of its round. With ``group_size 1`` and one process this
is the paper's model_{i-1}; steps only happen every ``batch_pairs`` pairs
anyway, so larger rounds change little (ours: rounds buy batched generation).

Engines (``--engine``, default auto: vLLM where installed): the DPO steps always run on the
transformers/peft model; the flows run on the engine. On vLLM, which holds its own copy of the
weights, the adapters are exported and loaded under new ids after every round that stepped (the
weight sync, ``VLLMFlowEngine.sync_adapters``), so each round is still predicted by the adapters as
they were at its start; each round also starts with an empty prefix cache, and the per-request seed
counter is checkpointed, so ``--resume`` stays exact on vLLM too (tested).

Examples are the first ``--examples`` of one seeded permutation of the split
(``--seed``; so a 400-example run is the start of a 2,000-example one), listed
in ``config.json`` so the baselines (``python -m flowcore baselines --run``) run
on exactly the same ones.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from flowcore.cli import HelpFormatter
from flowcore import adapters, data, models, results, stats
from flowcore.adapters import ROLES
from flowcore.online.checkpoint import (CheckpointError, can_resume, check_resume, load_checkpoint,
                                       save_checkpoint, truncate_jsonl)
from flowcore.online.dpo import OnlineDPO, OnlineDPOConfig
from flowcore.flow import engines
from flowcore.flow.engine import FlowConfig, FlowEngine
from flowcore.flow.generate import add_flow_args, flow_config
from flowcore.online.processes import Processes
from flowcore.online.rollouts import STOP_TIES, explore

PROGRESS, PAIRS, CONFIG = "progress.jsonl", "pairs.jsonl", "config.json"
KILL_ENV = "FLOWCORE_KILL_AFTER"  # testing: SIGKILL this process after it wrote this many progress lines


class TrainError(ValueError):
    """Unusable arguments or run directory; the message says what to do."""


# ---------------------------------------------------------------- run files


ORDER = "permutation-v2"  # config.json's "order": how example_order drew the run's examples


def example_order(problems: list[data.Problem], n: int, seed: int, order: str = ORDER) -> list[data.Problem]:
    """The first ``n`` problems of one seeded permutation of the whole pool, in training order.

    ``permutation-v2``: the order does not depend on ``n``, so a run of 400 is
    the start of a run of 2,000. ``sample-v1`` (``random.sample(range, n)``, a
    different order for each n) made the runs whose config.json has no
    ``order``; it is kept so they resume on the examples they began with.
    """
    if not 0 < n <= len(problems):
        raise TrainError(f"--examples must be between 1 and {len(problems)}, not {n}")
    if order == "permutation-v2":
        picked = random.Random(seed).sample(range(len(problems)), len(problems))[:n]
    elif order == "sample-v1":
        picked = random.Random(seed).sample(range(len(problems)), n)
    else:
        raise TrainError(f"unknown example order {order!r} (known: permutation-v2, sample-v1)")
    return [problems[i] for i in picked]


def run_order(args: argparse.Namespace) -> str:
    """A new run draws with ``ORDER``; a resumed one with the order it began with (no field: ``sample-v1``)."""
    path = Path(args.out) / CONFIG
    if args.resume and path.is_file():
        return json.loads(path.read_text()).get("order", "sample-v1")
    return ORDER


def load_problems(dataset: str, split: str, source: str = "local", data_file: str | None = None) -> list:
    """The split's problems, or those of a JSONL file (ids ``<dataset>/custom/<line>``)."""
    if data_file:
        return data.read_jsonl(data_file, dataset, "custom")
    return data.load(dataset, split, None, source)


# ---------------------------------------------------------------- CLI


def add_dpo_args(p: argparse.ArgumentParser) -> None:
    """OnlineDPOConfig fields as --flags (``--seed`` is shared with the flow)."""
    for f in fields(OnlineDPOConfig):
        if f.name == "stop_ties":
            p.add_argument("--stop-ties", choices=STOP_TIES, default=f.default,
                           help="a Stop decision where stopping and continuing both end right: none = no pair "
                                "(a tie); yes = a pair with Yes chosen (ours: stop once the answer is there)")
        elif f.name != "seed":
            p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)


def dpo_config(args: argparse.Namespace) -> OnlineDPOConfig:
    names = {f.name for f in fields(OnlineDPOConfig)}
    return OnlineDPOConfig(**{k: v for k, v in vars(args).items() if k in names})


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flowcore train", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--model", default=models.DEFAULT_MODEL,
                   help=f"embedded name ({', '.join(models.REGISTRY)}), local dir or hub id")
    p.add_argument("--dataset", choices=data.DATASETS, default="gsm8k")
    p.add_argument("--split", default="train")
    p.add_argument("--source", choices=("local", "hub"), default="local")
    p.add_argument("--data-file", default=None,
                   help="train on this JSONL of GSM8K-style (question, answer with '#### N') or MATH-style rows "
                        "instead of --split")
    p.add_argument("--examples", type=int, required=True, help="number of training examples (seeded sample)")
    p.add_argument("--out", required=True, help="run directory (runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out from its checkpoint")
    p.add_argument("--dtype", choices=list(models.DTYPES), default="auto",
                   help=models.DTYPE_HELP + ". Recorded in config.json's runtime block; --resume refuses another")
    p.add_argument("--device", choices=models.DEVICES, default="auto",
                   help=models.DEVICE_HELP + " (under accelerate: each process's own GPU). Recorded in config.json's "
                        "runtime block; --resume refuses another (sampling draws from another generator)")
    p.add_argument("--engine", choices=engines.ENGINES, default="auto",
                   help=engines.ENGINE_HELP + ". Recorded in config.json; --resume refuses another")
    add_flow_args(p)
    add_dpo_args(p)
    return p.parse_args(argv)


def prepare_run(args: argparse.Namespace, argv: list[str], problems: list, flow: FlowConfig,
                dpo: OnlineDPOConfig, procs: Processes, net, order: str, engine: str = "hf") -> Path:
    """Create the run directory, or check that --resume matches how it was started."""
    settings = {"model": args.model, "dataset": args.dataset, "split": args.split, "source": args.source,
                "data_file": args.data_file, "examples": args.examples, "seed": dpo.seed, "world_size": procs.world,
                "flow": flow.settings(), "dpo": dpo.settings()}
    if engine != "hf":
        settings["engine"] = engine  # runs without the field were made on hf (and resume there)
    runtime = {**results.runtime(net), "device": procs.device.type, "engine": engine}
    run = Path(args.out)
    config_path = run / CONFIG
    if args.resume:
        if not config_path.is_file():
            raise TrainError(f"nothing to resume: {config_path} does not exist (drop --resume to start the run)")
        results.lock(run, "train")
        check_resume(run, json.loads(config_path.read_text()), settings, [q.id for q in problems], runtime, order)
    else:
        if config_path.exists() or (run / PROGRESS).exists():
            raise TrainError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
        run.mkdir(parents=True, exist_ok=True)
        results.lock(run, "train")
        config = {**results.provenance(settings, results.cli_command("train", argv)),
                  "runtime": runtime, "order": order, "example_ids": [q.id for q in problems]}
        results.write_json_atomic(config_path, config)
    return run


def main(argv: list[str]) -> int:
    args = parse(argv)
    try:
        return _main(args, argv)
    finally:
        results.release(args.out)  # the run's lock (prepare_run), held while this command writes to it


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        procs = Processes(models.resolve_device(args.device))
        flow, dpo = flow_config(args), dpo_config(args)
        dpo.check()
        order = run_order(args)
        problems = example_order(load_problems(args.dataset, args.split, args.source, args.data_file),
                                 args.examples, dpo.seed, order)
        kind = engines.choose(args.engine, str(procs.device))
        if kind == "vllm" and procs.world > 1:
            raise TrainError("--engine vllm runs one process (one engine holds the model); for data-parallel "
                             "training pass --engine hf")
        net, tok = models.load(args.model, args.dtype, device=procs.device)
        run = (prepare_run(args, argv, problems, flow, dpo, procs, net, order, kind) if procs.rank == 0
               else Path(args.out))
        engine = None
        if kind == "vllm":  # the flows on vLLM, in the dtype the DPO model trains in
            engine = engines.open_engine(args.model, flow, dtype=str(net.dtype), device=str(procs.device),
                                         engine="vllm", seed=flow.seed, lora_rank=dpo.lora_r)
    except (TrainError, data.DataError, models.ModelError, results.Busy, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    procs.barrier()
    try:
        train(net, tok, problems, run, flow, dpo, procs, resume=args.resume, engine=engine)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- the loop


def train(net, tok, problems: list[data.Problem], run: Path, flow: FlowConfig, dpo: OnlineDPOConfig,
          procs: Processes, resume: bool = False, engine: FlowEngine | None = None) -> dict:
    """Run (or resume) the online loop over ``problems``; returns a summary of this process's work.

    ``engine``: where the flows run (an engine of its own, e.g. vLLM, kept in sync with the adapters);
    None: the transformers engine on the model being trained."""
    torch.manual_seed(dpo.seed)  # the same LoRA init on every process
    peft_model = adapters.attach(net, adapters.lora_config(dpo))
    peft_model.eval()
    trainer = OnlineDPO(peft_model, tok.pad_token_id, dpo, procs.rank, procs.world, procs.all_reduce)
    engine = engine or FlowEngine(peft_model, tok, flow)
    torch.manual_seed(dpo.seed + 1 + procs.rank)  # sampling differs between processes
    random.seed(dpo.seed + 1 + procs.rank)

    position, pending, elapsed_before = 0, {role: [] for role in ROLES}, 0.0
    if resume and can_resume(run):
        position, pending, elapsed_before = load_checkpoint(run, trainer, procs, engine)
    engine.sync_adapters(peft_model)
    if procs.rank == 0:
        for name in (PROGRESS, PAIRS):
            (run / name).touch()
            truncate_jsonl(run / name, position)
    procs.barrier()

    n, round_size = len(problems), dpo.group_size * procs.world
    kill_after = int(os.environ.get(KILL_ENV, "0"))
    written, pairs_made, t_start = 0, 0, time.time()
    last_checkpoint = position
    done_correct = [r["correct"] for r in results.read_jsonl(run / PROGRESS)] if procs.rank == 0 else []
    bar = None
    if procs.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=n, initial=position, desc=f"online Flow-DPO x{procs.world}", unit="example")

    while position < n:
        t0, cpu0 = time.time(), time.process_time()
        indices = list(range(position, min(n, position + round_size)))
        mine = indices[procs.rank * dpo.group_size:(procs.rank + 1) * dpo.group_size]
        engine.new_round()
        explorations = explore(engine, [problems[i] for i in mine], dpo.rollouts, dpo.rollout_temperature,
                               dpo.stop_ties)
        explore_seconds = procs.gather([round(time.time() - t0, 3)])  # per process: data-parallel balance
        found = procs.gather([(i, x) for i, x in zip(mine, explorations)])
        found.sort(key=lambda item: item[0])
        for _, x in found:
            for p in x.pairs:
                pending[p.role].append(p)

        steps = []
        for role in ROLES:
            while len(pending[role]) >= dpo.batch_pairs:
                batch, pending[role] = pending[role][:dpo.batch_pairs], pending[role][dpo.batch_pairs:]
                steps.append(trainer.update(role, batch))
        position = indices[-1] + 1
        if position == n:  # the run's last, smaller batch per adapter
            for role in ROLES:
                if pending[role]:
                    steps.append(trainer.update(role, pending[role]))
                    pending[role] = []
        if steps and position < n:
            engine.sync_adapters(peft_model)  # the next round is predicted by the adapters as they are now

        seconds, cpu_seconds = time.time() - t0, time.process_time() - cpu0
        elapsed = elapsed_before + time.time() - t_start
        if procs.rank == 0:
            for j, (i, x) in enumerate(found):
                t = x.trace
                kinds = [p.role for p in x.pairs]
                record = {
                    "index": i, "problem_id": t.problem_id, "correct": t.correct, "extracted": t.extracted,
                    "gold": t.gold, "completion": t.completion,  # the graded text: the accuracy can be re-graded
                    "n_chunks": len(t.chunks), "end_reason": t.end_reason, "n_tokens": t.n_tokens,
                    "n_rollouts": len(x.rollouts), "rollouts_correct": sum(r.correct for r in x.rollouts),
                    "n_answer_pairs": kinds.count("answer"), "n_stop_pairs": kinds.count("stop"),
                    "losses": steps if j == len(found) - 1 else [],
                    "explore_seconds": explore_seconds if j == len(found) - 1 else [],
                    "seconds": round(seconds / len(found), 3), "elapsed": round(elapsed, 3),
                    # this process's CPU time (all its threads): a cost that other load on the machine barely moves
                    "cpu_seconds": round(cpu_seconds / len(found), 3),
                }
                results.append_jsonl(run / PAIRS, [{"index": i, **p.to_dict()} for p in x.pairs])
                results.append_jsonl(run / PROGRESS, [record])
                written += 1
                pairs_made += len(x.pairs)
                done_correct.append(t.correct)
                if kill_after and written >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
            acc = stats.accuracy(done_correct)["accuracy"]
            bar.set_postfix(acc=f"{100 * acc:.1f}%", pairs_s=f"{pairs_made / max(1e-9, time.time() - t_start):.2f}")
            bar.update(len(found))

        if position - last_checkpoint >= dpo.checkpoint_every or position == n:
            save_checkpoint(run, trainer, peft_model, position, pending, elapsed, procs, engine)
            last_checkpoint = position

    # every process must hold the same adapters (same batches, summed gradients): check it
    checksum = sum(float(p.detach().double().sum()) for role in ROLES for p in trainer.params[role])
    checksums = procs.gather([checksum])
    if len(set(checksums)) > 1:
        raise RuntimeError(f"processes ended with different adapters: {checksums}")
    summary = {"steps": dict(trainer.steps), "generated_tokens": engine.stats["generated_tokens"],
               "decoded_row_tokens": engine.stats["decoded_row_tokens"],
               "adapter_syncs": engine.stats["adapter_syncs"], "sync_seconds": engine.stats["sync_seconds"]}
    if procs.rank == 0:
        bar.close()
        if procs.world > 1:
            print(f"{procs.world} processes hold identical adapters (checksum {checksum:.6g})")
        records = results.read_jsonl(run / PROGRESS)
        acc = stats.accuracy([r["correct"] for r in records])
        n_pairs = sum(r["n_answer_pairs"] + r["n_stop_pairs"] for r in records)
        summary.update(accuracy=acc, pairs=n_pairs)
        syncs = (f"; {summary['adapter_syncs']} adapter syncs in {summary['sync_seconds']:.2f} s"
                 if summary["adapter_syncs"] else "")
        syncs += (f"; engine {engine.engine_name}: {engine.stats['generated_tokens']} tokens generated, Answer calls "
                  f"{engine.stats['answer_seconds']:.1f} s, Stop calls {engine.stats['stop_seconds']:.1f} s")
        print(f"online Flow-DPO: progressive accuracy {stats.fmt(acc)}; {n_pairs / max(1, len(records)):.2f} pairs "
              f"per example; steps {trainer.steps}{syncs}; files in {run}")
    return summary
