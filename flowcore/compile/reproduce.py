"""`python -m flowcore reproduce --preset cpu|full`: the paper's compile table, end to end, resumably.

Stages (each skips what its output files already hold, so rerunning the same
command continues a killed run):

1. ``flow-dpo``   online Flow-DPO (``python -m flowcore train``) into the preset's
                  run directory; its ``adapters/`` are the trained flow.
2. ``traces``     on one prompt set from the train splits: ground truth, the
                  base model's zero-shot samples, the trained flow's traces
                  (``<out>/traces/<source>.jsonl``, every sample graded).
3. ``select``     the equal-count selection (``traces.SELECTION_RULE``) into
                  ``<out>/sft_data/<source>.jsonl`` and ``selection.json``.
4. ``sft``        one LoRA SFT adapter per source (paper Table 3) into
                  ``<out>/sft/<source>/`` (peft directories: the app and
                  ``eval_tasks/reproduce_table.py`` load these).
5. ``eval``       the base model zero-shot and the three SFT models on the fixed
                  evaluation subsets (``<out>/eval/<row>/<set>.jsonl``).
6. ``table``      ``<out>/table.md``, ``table.json`` (ours with 95% intervals,
                  McNemar tests, the paper's numbers beside), ``chart.html``/``.png``.

The trained flow runs as its online run trained it: where the run's ``config.json`` exists (the preset's
run, or the folder above ``--flow-adapters``), the model and the flow settings chunk_size, max_steps,
stop_threshold and stop_at_eos are taken from it (``presets.follow_run``); a ``--model`` that differs is refused.

``<out>/config.json`` records the command, preset, model, every setting, seed,
date and git commit; a rerun with other settings is refused (use another --out).
Each file a model makes records its dtype (``runtime``), and ``table.json``
lists them. Presets: ``flowcore.compile.presets``; stages: ``flowcore.compile.pipeline``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flowcore import data, models, results
from flowcore.cli import HelpFormatter
from flowcore.compile.pipeline import STAGES, Pipeline, ReproduceError
from flowcore.compile.presets import PRESETS, follow_run, run_diff
from flowcore.eval import evaluate
from flowcore.flow import engines


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m flowcore reproduce", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), required=True,
                   help="cpu: sized for a 2-core CPU (hours, in the background); full: the paper's sizes on the "
                        "flow of runs/online-dpo-2000 (a GPU)")
    p.add_argument("--model", default=None, help="override the preset's model (embedded name, local dir, hub id)")
    p.add_argument("--out", default=None, help="override the output directory (default results/<preset>)")
    p.add_argument("--stages", default="all", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    p.add_argument("--flow-adapters", default=None,
                   help="use these trained flow adapters (answer/, stop/) instead of the preset's run; "
                        "then stage flow-dpo is skipped")
    p.add_argument("--rows", default=",".join(evaluate.MODELS),
                   help="stages sft and eval: comma-separated subset of the table's rows (default: all); two "
                        "processes with disjoint subsets split the work (at one thread each, on a 2-core CPU)")
    p.add_argument("--eval-sets", default=None,
                   help="stage eval: comma-separated subset of the preset's evaluation sets, by name "
                        "(e.g. gsm8k-test-first100; default: all)")
    p.add_argument("--dtype", choices=list(models.DTYPES), default="auto",
                   help="model dtype (default auto: bf16 where the CPU/GPU has fast bf16, else fp32); recorded in "
                        "each results file's runtime block. Pin it when resuming a run on a different machine")
    p.add_argument("--engine", choices=engines.ENGINES, default="auto",
                   help="stages traces and eval: " + engines.ENGINE_HELP + "; recorded in their files' settings "
                        "(a file is resumed on the engine that started it)")
    args = p.parse_args(argv)
    cfg = PRESETS[args.preset]()
    if args.model:  # another model trains its own flow
        cfg.model, cfg.dpo_run = args.model, f"runs/{args.preset}-{Path(args.model).name}"
    if args.out:
        cfg.out = args.out
    run = Path(args.flow_adapters).parent if args.flow_adapters else Path(cfg.dpo_run)
    taken = run_diff(cfg, run)  # the trained flow is run as it was trained: its model and flow settings
    if args.model and "model" in taken:
        print(f"error: --model {args.model}, but the flow in {run} was trained on {taken['model'][0]}", file=sys.stderr)
        return 2
    if taken:
        print(f"[reproduce] from {run / 'config.json'}: " + ", ".join(f"{k} {v}" for k, (v, _) in taken.items()))
    cfg = follow_run(cfg, run)
    stages = STAGES if args.stages == "all" else tuple(s.strip() for s in args.stages.split(","))
    rows = tuple(r.strip() for r in args.rows.split(","))
    sets = None if args.eval_sets is None else tuple(s.strip() for s in args.eval_sets.split(","))
    for what, given, known in (("stage", stages, STAGES), ("row", rows, evaluate.MODELS),
                               ("evaluation set", sets or (), [es.name for es in cfg.eval_sets])):
        unknown = [x for x in given if x not in known]
        if unknown:
            print(f"error: unknown {what}(s) {unknown}; choose from {', '.join(known)}", file=sys.stderr)
            return 2
    if args.flow_adapters:
        stages = tuple(s for s in stages if s != "flow-dpo")
    try:
        Pipeline(cfg, results.cli_command("reproduce", argv), args.flow_adapters, rows, sets,
                 args.dtype, args.engine).run(stages)
    except (ReproduceError, data.DataError, models.ModelError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
