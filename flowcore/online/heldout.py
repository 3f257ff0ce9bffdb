"""`python -m flowcore heldout --run runs/NAME`: a training run's flow against its two baselines on test sets.

The held-out evaluation of online Flow-DPO (docs/experiments/online-dpo-2000.md): three models, each
problem answered once, greedy, in the dtype the run trained in, with the run's flow settings:

- ``trained_flow``: the flow with the run's adapters (``<run>/adapters/answer`` and ``stop``: the
  last export; a finished run's final adapters);
- ``untrained_flow``: the same flow with both adapters at zero (the base model in both roles);
- ``zero_shot``: the base model alone, same token budget (``flow.zero_shot_config``).

Per-problem results go to ``<out>/<model>/<set>.jsonl`` (one graded trace per problem, appended as
flows finish, resumable, with a meta file), and the table to ``<out>/table.json`` / ``table.md``:
each model's accuracy [95% Wilson interval], mean tokens and seconds per problem, and the trained
flow against each baseline on the same problems (exact McNemar p, the paired difference with its 95%
interval). The app's Training tab shows ``table.json``.

    python -m flowcore heldout --run runs/NAME --out results/NAME                 # GSM8K test + MATH500
    python -m flowcore heldout --run runs/NAME --out results/NAME --sets gsm8k:test --limit 50
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from flowcore.cli import HelpFormatter
from flowcore import data, models, stats
from flowcore.eval import evaluate
from flowcore.eval.evaluate import EvalSet, comparisons_table, markdown_table, pct
from flowcore.flow import engines
from flowcore.flow.engine import FlowConfig, zero_shot_config
from flowcore.flow.generate import solve_into
from flowcore.online.baselines import run_config
from flowcore.results import ResultsFile, cli_command, provenance, write_json_atomic

MODELS = {"trained_flow": "trained flow", "untrained_flow": "untrained flow", "zero_shot": "zero-shot"}
BASELINES = ("untrained_flow", "zero_shot")  # each compared with the trained flow
DEFAULT_SETS = ("gsm8k:test", "math:test500")


def model_config(flow: FlowConfig, model: str) -> FlowConfig:
    """The FlowConfig of one of ``MODELS`` (adapters named "answer" and "stop" in the engine)."""
    if model == "trained_flow":
        return replace(flow, answer_role="answer", stop_role="stop")
    if model == "untrained_flow":
        return replace(flow, answer_role=None, stop_role=None)
    return zero_shot_config(flow)


def eval_set(spec: str, limit: int | None) -> EvalSet:
    dataset, _, split = spec.partition(":")
    if dataset not in data.DATASETS or split not in data.SPLITS[dataset]:
        raise ValueError(f"--sets takes DATASET:SPLIT (e.g. gsm8k:test, math:test500), not {spec!r}")
    return EvalSet(dataset, split, limit)


def cell(records: list[dict], seconds: float) -> dict:
    """``evaluate.cell`` (accuracy, interval, answered) plus the cost: mean tokens and seconds per problem."""
    n = max(1, len(records))
    return {**evaluate.cell(records), "mean_tokens": round(sum(r["n_tokens"] for r in records) / n, 1),
            "seconds_per_problem": round(seconds / n, 2)}


def table(outcomes: dict[str, dict[str, list[bool]]], cells: dict[str, dict[str, dict]]) -> dict:
    """``outcomes[set][model]`` = correct per problem, one order -> the rows and the paired comparisons."""
    rows = [{"model": label, **{name: pct(cells[name][m]) for name in cells}} for m, label in MODELS.items()]
    comparisons = []
    for name, by_model in outcomes.items():
        for b in BASELINES:
            test = stats.mcnemar(by_model["trained_flow"], by_model[b])
            diff = stats.paired_difference(by_model["trained_flow"], by_model[b])
            comparisons.append({"data": name, "a": MODELS["trained_flow"], "b": MODELS[b],
                                "a_only_correct": test["only_a"], "b_only_correct": test["only_b"],
                                "p_value": test["p_value"], "difference": diff["difference"], "ci95": diff["ci95"]})
    return {"rows": rows, "cells": cells, "comparisons": comparisons}


def markdown(tab: dict) -> str:
    lines = ["**Held-out accuracy** % [95% Wilson interval]", markdown_table(tab["rows"]),
             "**Trained flow vs each baseline, same problems** (A - B: paired 95% interval; exact McNemar p)",
             comparisons_table(tab["comparisons"]),
             "**Cost per problem** (mean generated tokens; seconds, as the meta files record them)",
             markdown_table([{"data": name, "model": MODELS[m], "tokens": c["mean_tokens"],
                              "seconds": c["seconds_per_problem"], "answered": f"{c['answered']}/{c['n']}"}
                             for name, by_model in tab["cells"].items() for m, c in by_model.items()])]
    return "\n\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m flowcore heldout", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--run", required=True, help="run directory written by `python -m flowcore train`")
    p.add_argument("--out", required=True, help="results directory (results/NAME)")
    p.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), help="evaluation sets, DATASET:SPLIT")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each set (default: all)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--batch-size", type=int, default=None, help="flows per generate call (default: the run's)")
    p.add_argument("--device", choices=models.DEVICES, default="auto", help=models.DEVICE_HELP)
    p.add_argument("--engine", choices=engines.ENGINES, default="auto",
                   help=engines.ENGINE_HELP + "; recorded in the meta files")
    args = p.parse_args(argv)
    run, out_dir = Path(args.run), Path(args.out)
    try:
        config = run_config(run)
        settings = config["settings"]
        flow = FlowConfig(**settings["flow"])
        if args.batch_size:
            flow.batch_size = args.batch_size
        sets = [eval_set(s, args.limit) for s in args.sets]
        adapters = engines.role_dirs(run / "adapters")
        if "trained_flow" in args.models and not all((d / "adapter_config.json").is_file() for d in adapters.values()):
            raise FileNotFoundError(f"{run}/adapters has no answer/ and stop/ adapters yet: they are exported at each "
                                    f"checkpoint of `python -m flowcore train ... --out {run}`")
        dtype = config.get("runtime", {}).get("dtype", "auto").removeprefix("torch.")
        kind = engines.choose(args.engine, args.device)
        engine = engines.open_engine(settings["model"], flow, adapters if "trained_flow" in args.models else {},
                                     dtype=dtype, device=args.device, engine=kind, seed=flow.seed,
                                     lora_rank=settings["dpo"]["lora_r"])
    except (FileNotFoundError, data.DataError, models.ModelError, KeyError, TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    command = cli_command("heldout", argv)
    outcomes: dict[str, dict[str, list[bool]]] = {}
    cells: dict[str, dict[str, dict]] = {}
    for es in sets:
        problems = es.problems()
        for m in args.models:
            cfg = model_config(flow, m)
            info = {"run": str(run), "model": settings["model"], "which": m, "set": es.name, "flow": cfg.settings(),
                    "adapters": str(run / "adapters") if m == "trained_flow" else None, "engine": kind}
            try:
                out = ResultsFile(out_dir / m / f"{es.name}.jsonl", info, command)
                out.note_runtime(engine)  # a file started in another dtype is refused
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            solve_into(engine.configured(cfg), problems, out, desc=f"{MODELS[m]} on {es.name}")
            by_id = {r["problem_id"]: r for r in out.records}
            records = [by_id[q.id] for q in problems]
            outcomes.setdefault(es.name, {})[m] = [bool(r["correct"]) for r in records]
            cells.setdefault(es.name, {})[m] = cell(records, out.meta.get("seconds", 0.0))
            out.finish(cells[es.name][m])
            print(f"{MODELS[m]} on {es.name}: {stats.fmt(cells[es.name][m])}")
    if set(args.models) != set(MODELS):
        print(f"per-problem files in {out_dir}; the table needs all three models (--models {' '.join(MODELS)})")
        return 0
    tab = table(outcomes, cells)
    result = {**provenance({"run": str(run), "model": settings["model"], "flow": flow.settings(),
                            "sets": [es.name for es in sets], "dtype": str(engine.dtype)}, command), **tab}
    write_json_atomic(out_dir / "table.json", result)
    (out_dir / "table.md").write_text(markdown(tab))
    print(markdown(tab), end="")
    print(f"wrote {out_dir / 'table.json'} and {out_dir / 'table.md'}")
    return 0
