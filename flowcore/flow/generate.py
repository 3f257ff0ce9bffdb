"""`python -m flowcore generate`: run the flow (or the zero-shot baseline) on a dataset.

Writes one graded trace per problem to ``--out`` (JSONL, appended as flows
finish; rerunning the same command resumes), shows a progress bar with the
running accuracy, and prints the accuracy with its 95% interval.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields

from flowcore.cli import HelpFormatter
from flowcore import data, models, stats
from flowcore.flow import engines
from flowcore.flow.engine import FlowConfig, FlowEngine, zero_shot_config
from flowcore.results import ResultsFile, cli_command


def add_flow_args(p: argparse.ArgumentParser) -> None:
    """FlowConfig fields as --flags (the CLI invents no parameters of its own)."""
    for f in fields(FlowConfig):
        if f.name in ("use_stop", "answer_role", "stop_role"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):  # argparse's type=bool reads any non-empty text, "False" too, as True
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default)


def flow_config(args: argparse.Namespace) -> FlowConfig:
    names = {f.name for f in fields(FlowConfig)}
    return FlowConfig(**{k: v for k, v in vars(args).items() if k in names})


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=data.DATASETS, default="gsm8k")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="first N problems")
    p.add_argument("--source", choices=("local", "hub"), default="local")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip malformed dataset lines instead of stopping")


def solve_into(engine: FlowEngine, problems: list[data.Problem], out: ResultsFile, desc: str) -> None:
    """Solve the problems not yet in ``out``, appending each trace as its flow finishes."""
    from tqdm import tqdm

    todo = [q for q in problems if q.id not in out.done()]
    t0 = time.time()
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc=desc, unit="problem")
    for trace in engine.solve(todo):
        out.append(trace.to_dict())
        acc = stats.accuracy([r["correct"] for r in out.records])
        rate = engine.stats["generated_tokens"] / max(1e-9, time.time() - t0)
        bar.set_postfix(acc=f"{100 * acc['accuracy']:.1f}%", tok_s=f"{rate:.0f}")
        bar.update(1)
    bar.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m flowcore generate", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--model", default=models.DEFAULT_MODEL,
                   help=f"embedded name ({', '.join(models.REGISTRY)}), local dir or hub id")
    p.add_argument("--adapters", default=None, help="directory with answer/ and stop/ peft adapters (default: none = untrained flow)")
    p.add_argument("--mode", choices=("flow", "zero-shot"), default="flow")
    p.add_argument("--dtype", choices=list(models.DTYPES), default="auto",
                   help=models.DTYPE_HELP + "; recorded in the meta file")
    p.add_argument("--device", choices=models.DEVICES, default="auto", help=models.DEVICE_HELP)
    p.add_argument("--engine", choices=engines.ENGINES, default="auto",
                   help=engines.ENGINE_HELP + "; recorded in the meta file")
    add_data_args(p)
    add_flow_args(p)
    p.add_argument("--out", required=True, help="traces JSONL (resumed if it exists with the same settings)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)

    try:
        problems = data.load(args.dataset, args.split, args.limit, args.source,
                             on_error="skip" if args.skip_bad_lines else "raise")
        cfg = flow_config(args)
        if args.mode == "zero-shot":
            cfg = zero_shot_config(cfg)
        settings = {"model": args.model, "adapters": args.adapters, "mode": args.mode, "dataset": args.dataset,
                    "split": args.split, "limit": args.limit, "source": args.source, "flow": cfg.settings()}
        kind = engines.choose(args.engine, args.device)
        if kind != "hf":
            settings["engine"] = kind  # a file made on one engine is not resumed on the other
        out = ResultsFile(args.out, settings, cli_command("generate", argv), overwrite=args.overwrite)
        engine = engines.open_engine(args.model, cfg, engines.role_dirs(args.adapters), args.dtype, args.device,
                                     kind, seed=cfg.seed)
        out.note_runtime(engine)  # a file started in another dtype is refused
    except (data.DataError, models.ModelError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    solve_into(engine, problems, out, desc=f"{args.mode} {args.dataset}")

    wanted = {q.id for q in problems}
    acc = stats.accuracy([r["correct"] for r in out.records if r["problem_id"] in wanted])
    summary = {**acc, "generated_tokens": sum(r["n_tokens"] for r in out.records),
               "mean_chunks": sum(len(r["chunks"]) for r in out.records) / max(1, len(out.records)),
               "answered": sum(r["extracted"] is not None for r in out.records)}
    out.finish(summary)
    print(f"{args.mode} {args.model} {args.dataset}/{args.split}: accuracy {stats.fmt(acc)}; "
          f"{summary['answered']}/{acc['n']} with an extractable answer; traces in {args.out}")
    return 0
