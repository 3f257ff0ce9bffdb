"""`python -m flowcore baselines --run runs/NAME`: the paper's two baselines on a run's exact examples.

Paper Figure 3 draws, next to online Flow-DPO's progressive accuracy, the
flow without training and the single model zero-shot on the same examples.
This reads the run's ``config.json`` (model, dataset, flow settings and the
ordered ``example_ids``) and writes, with the same machinery as
``python -m flowcore generate``:

- ``baseline_flow.jsonl``: the untrained flow (base model for both roles);
- ``baseline_zero_shot.jsonl``: the base model alone, same token budget
  (``flow.zero_shot_config``).

One graded trace per example, appended as flows finish; rerunning resumes.
Both run on one engine (``--engine``, loaded once): the zero-shot baseline is
the same loaded model under ``zero_shot_config`` (``engine.configured``).
Neither baseline learns, so their "progressive" accuracy is a running mean
over the run's example order.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flowcore.cli import HelpFormatter
from flowcore import data, models, stats
from flowcore.flow import engines
from flowcore.flow.engine import FlowConfig, zero_shot_config
from flowcore.flow.generate import solve_into
from flowcore.results import ResultsFile, cli_command

FILES = {"flow": "baseline_flow.jsonl", "zero-shot": "baseline_zero_shot.jsonl"}


def run_config(run: Path) -> dict:
    path = Path(run) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: start the run first with "
                                f"`python -m flowcore train --examples N --out {run}`")
    return json.loads(path.read_text())


def run_problems(config: dict) -> list[data.Problem]:
    """The run's examples, in its training order."""
    from flowcore.online.train import load_problems

    s = config["settings"]
    by_id = {q.id: q for q in load_problems(s["dataset"], s["split"], s["source"], s.get("data_file"))}
    missing = [i for i in config["example_ids"] if i not in by_id]
    if missing:
        raise data.DataError(f"{len(missing)} example(s) of the run are not in {s['dataset']}/{s['split']}: {missing[:3]}")
    return [by_id[i] for i in config["example_ids"]]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m flowcore baselines", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--run", required=True, help="run directory written by `python -m flowcore train`")
    p.add_argument("--which", choices=("both", *FILES), default="both")
    p.add_argument("--batch-size", type=int, default=None, help="flows per generate call (default: the run's)")
    p.add_argument("--dtype", choices=list(models.DTYPES), default=None,
                   help="model dtype (default: the one the run trained in, from config.json's runtime block; "
                        "auto for runs that did not record it). Trade-off: " + models.DTYPE_TRADEOFF)
    p.add_argument("--device", choices=models.DEVICES, default="auto", help=models.DEVICE_HELP)
    p.add_argument("--engine", choices=engines.ENGINES, default="auto",
                   help=engines.ENGINE_HELP + "; recorded in the meta files")
    args = p.parse_args(argv)
    run = Path(args.run)
    try:
        config = run_config(run)
        problems = run_problems(config)
        settings = config["settings"]
        flow = FlowConfig(**settings["flow"])
        if args.batch_size:
            flow.batch_size = args.batch_size
        dtype = args.dtype or config.get("runtime", {}).get("dtype", "auto").removeprefix("torch.")
        kind = engines.choose(args.engine, args.device)
        engine = engines.open_engine(settings["model"], flow, dtype=dtype, device=args.device, engine=kind,
                                     seed=flow.seed)
    except (FileNotFoundError, data.DataError, models.ModelError, KeyError, TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    for mode in (FILES if args.which == "both" else [args.which]):
        cfg = zero_shot_config(flow) if mode == "zero-shot" else flow
        info = {"model": settings["model"], "mode": mode, "dataset": settings["dataset"], "split": settings["split"],
                "example_ids": config["example_ids"], "flow": cfg.settings()}
        if kind != "hf":
            info["engine"] = kind  # a file made on one engine is not resumed on the other
        try:
            out = ResultsFile(run / FILES[mode], info, cli_command("baselines", argv))
            out.note_runtime(engine)  # a file started in another dtype is refused
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        solve_into(engine.configured(cfg), problems, out, desc=f"baseline {mode}")
        acc = stats.accuracy([r["correct"] for r in out.records])
        out.finish(acc)
        print(f"baseline {mode}: {stats.fmt(acc)} -> {run / FILES[mode]}")
    return 0
