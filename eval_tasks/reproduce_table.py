"""Reproduce the compile table through lm-eval: the base model 0-shot and its three SFT adapters.

    python eval_tasks/reproduce_table.py                       # full test sets, default model
    python eval_tasks/reproduce_table.py --limit 50            # first 50 problems of each task
    python eval_tasks/reproduce_table.py --limit 50 --rows zero_shot,ground_truth --out T.json  # some rows

Rows (the compile issue's table): 0-shot base; SFT on ground-truth, self-generated
and flow-generated traces, read from ``--sft-dir`` (default ``results/cpu/sft``:
``ground_truth/``, ``self_generated/``, ``flow_generated/``, each a peft adapter
directory). Each row is ``lm_eval --model hf --apply_chat_template`` on the tasks
``flow_gsm8k`` and ``flow_math`` (greedy, flowcore's prompt and grader). A
missing adapter is reported with the command that makes it, the other rows
still run, and the exit status is 3.

Prints a markdown table (accuracy +- stderr, the rate of answers with an
extractable final answer, n) and, with ``--out``, writes it as JSON after each
row. ``--out`` also makes the run resumable and splittable: rows already in the
file (made with the same settings) are kept, not rerun, so a killed run
continues where it stopped, and two processes with disjoint ``--rows`` can fill
one file (on a 2-core CPU, one thread each).

Provenance: the file records the git commit and start time of its first
writer, each row the commit, command and finish time of the run that made it.
lm-eval's per-sample logs (problem id, prompt, completion, exact_match,
has_answer) go next to the table: ``<out stem>-samples/<row>/<task>.jsonl``,
named in the row's ``samples``.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TASKS_DIR = Path(__file__).resolve().parent
MAKE_ADAPTERS = "python -m flowcore reproduce --preset cpu"
ROWS = [  # (label, sub-directory of --sft-dir; None = the base model)
    ("0-shot base", None),
    ("SFT ground truth", "ground_truth"),
    ("SFT self-generated", "self_generated"),
    ("SFT flow-generated", "flow_generated"),
]
KEYS = [sub or "zero_shot" for _, sub in ROWS]  # --rows names (the same as `reproduce --rows`)
PROVENANCE = ("started", "git_commit")  # of the table file's first writer (each row records its own commit)


def settings(args, tasks: list[str]) -> dict:
    """What a row's numbers depend on; rows kept from --out must have been made with the same."""
    return {"model": args.model, "sft_dir": shown(args.sft_dir), "dtype": args.dtype, "limit": args.limit,
            "tasks": tasks, "max_gen_toks": args.max_gen_toks}


def shown(path) -> str:
    """``path`` as the --out file records it: relative to the repository when inside it (works in any clone)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def save_row(out: Path, head: dict, row: dict) -> None:
    """Add ``row`` to the JSON table at ``out`` (under a lock: another process may be writing its rows).

    ``head``: the settings and this run's provenance; a file that exists keeps the provenance it has.
    """
    from flowcore import results

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(out.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(out.read_text()) if out.is_file() else head
        rows = {r["label"]: r for r in old.get("rows", [])}
        rows[row["label"]] = row
        results.write_json_atomic(out, {**head, **{k: old.get(k) for k in PROVENANCE},
                                        "rows": [rows[label] for label, _ in ROWS if label in rows]})


def save_samples(out: Path, key: str, samples: dict[str, list[dict]]) -> dict[str, str]:
    """Write each task's per-sample log next to the table; ``{task: path relative to the table's folder}``."""
    from flowcore import results

    paths = {}
    for task, rows in samples.items():
        path = out.parent / f"{out.stem}-samples" / key / f"{task}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        results.write_jsonl_atomic(path, rows)
        paths[task] = str(path.relative_to(out.parent))
    return paths


def sample_record(s: dict) -> dict:
    """One problem of lm-eval's ``log_samples`` output, as the per-sample file keeps it."""
    return {"doc_id": s["doc_id"], "problem_id": s["doc"]["id"], "dataset": s["doc"]["dataset"],
            "gold": s["doc"]["gold"], "prompt": s["arguments"][0][0], "completion": s["resps"][0][0],
            "exact_match": s["exact_match"], "has_answer": s["has_answer"]}


def adapter_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable peft adapter directory, or None."""
    if not path.is_dir():
        return f"missing: {path}"
    if not (path / "adapter_config.json").is_file():
        return f"not a peft adapter directory (no adapter_config.json): {path}"
    return None


def evaluate_row(model_dir: str, adapter: Path | None, tasks: list[str], args,
                 task_manager) -> tuple[dict, dict[str, list[dict]]]:
    """(scores per task, per-sample records per task) of one model."""
    import lm_eval

    model_args = {"pretrained": model_dir, "dtype": args.dtype}
    if adapter is not None:
        model_args["peft"] = str(adapter)
    gen_kwargs = {"max_gen_toks": args.max_gen_toks} if args.max_gen_toks else None
    out = lm_eval.simple_evaluate(
        model="hf", model_args=model_args, tasks=tasks, limit=args.limit, batch_size=args.batch_size,
        device=args.device,
        apply_chat_template=True, gen_kwargs=gen_kwargs, task_manager=task_manager, log_samples=True,
    )
    scores, samples = {}, {}
    for task in tasks:
        r = out["results"][task]
        scores[task] = {
            "accuracy": r["exact_match,none"], "stderr": r["exact_match_stderr,none"],
            "has_answer": r["has_answer,none"], "n": out["n-samples"][task]["effective"],
        }
        samples[task] = sorted((sample_record(s) for s in out["samples"][task]), key=lambda s: s["doc_id"])
    return scores, samples


def fmt_cell(cell: dict) -> str:
    return (f"{100 * cell['accuracy']:.1f} ± {100 * cell['stderr']:.1f} "
            f"(answered {100 * cell['has_answer']:.0f}%, n={cell['n']})")


def table(rows: list[dict], tasks: list[str]) -> str:
    lines = ["| model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for r in rows:
        if r.get("missing"):
            cells = [f"missing ({r['missing']}; make it: `{MAKE_ADAPTERS}`)"] + [""] * (len(tasks) - 1)
        else:
            cells = [fmt_cell(r["scores"][t]) for t in tasks]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from flowcore import models, results
    from flowcore.cli import HelpFormatter

    p = argparse.ArgumentParser(prog="eval_tasks/reproduce_table.py", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--model", default=models.DEFAULT_MODEL, help="embedded name, local dir or hub id of the base model")
    p.add_argument("--sft-dir", default=str(ROOT / "results" / "cpu" / "sft"),
                   help="directory holding ground_truth/, self_generated/, flow_generated/ peft adapters")
    p.add_argument("--tasks", default="flow_gsm8k,flow_math")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each task (default: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPUs / AVX512-BF16 CPUs, else float32), float32, bfloat16")
    p.add_argument("--device", default=None, help="cuda, cuda:0, cpu (default: cuda if available, else cpu)")
    p.add_argument("--max-gen-toks", type=int, default=None, help="override the tasks' 960-token budget")
    p.add_argument("--rows", default=",".join(KEYS), help=f"comma-separated subset of {','.join(KEYS)} (default: all)")
    p.add_argument("--out", default=None,
                   help="also write the table as JSON here, row by row; rows already in it are kept (resume)")
    args = p.parse_args(argv)
    chosen = [r.strip() for r in args.rows.split(",") if r.strip()]
    if not chosen or any(r not in KEYS for r in chosen):
        print(f"error: --rows takes a subset of {', '.join(KEYS)}, not {args.rows!r}", file=sys.stderr)
        return 2

    if args.dtype == "auto":
        args.dtype = str(models.fast_dtype()).removeprefix("torch.")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    tasks = [t for t in args.tasks.split(",") if t]
    try:
        model_dir = models.resolve(args.model)
    except models.ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    unknown = [t for t in tasks if t not in task_manager.all_tasks]
    if unknown:
        print(f"error: unknown task(s) {', '.join(unknown)}; known here: {', '.join(task_manager.all_tasks)}",
              file=sys.stderr)
        return 1

    command = " ".join(["python", "eval_tasks/reproduce_table.py", *(sys.argv[1:] if argv is None else argv)])
    made = results.provenance(settings(args, tasks), command)
    head = {**made["settings"], **{k: made[k] for k in PROVENANCE}}
    out = Path(args.out) if args.out else None
    done = {}
    if out is not None and out.is_file():
        old = json.loads(out.read_text())
        made_with = {k: old.get(k) for k in made["settings"]}
        if made_with != made["settings"]:
            print(f"error: {out} was made with other settings ({made_with}); use another --out", file=sys.stderr)
            return 1
        done = {r["label"]: r for r in old["rows"] if "scores" in r}

    sft_dir = Path(args.sft_dir)
    rows, missing = [], []
    for (label, sub), key in zip(ROWS, KEYS):
        if key not in chosen:
            continue
        if label in done:
            print(f"[reproduce_table] {label}: kept from {out}", file=sys.stderr)
            rows.append(done[label])
            continue
        adapter = sft_dir / sub if sub else None
        problem = adapter_problem(adapter) if adapter else None
        if problem:
            missing.append(problem)
            row = {"label": label, "adapter": shown(adapter), "missing": problem}
        else:
            print(f"[reproduce_table] {label}: {model_dir}" + (f" + {adapter}" if adapter else ""), file=sys.stderr)
            t0 = time.time()
            scores, samples = evaluate_row(model_dir, adapter, tasks, args, task_manager)
            row = {"label": label, "adapter": shown(adapter) if adapter else None, "scores": scores,
                   "samples": save_samples(out, key, samples) if out is not None else None,
                   "seconds": round(time.time() - t0, 1), "command": command, "git_commit": made["git_commit"],
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        rows.append(row)
        if out is not None:
            save_row(out, head, row)
    if out is not None and out.is_file():  # the whole file: rows another process added too
        rows = json.loads(out.read_text())["rows"]

    print(f"\nlm-eval, {args.model}, {args.dtype}, greedy, limit={args.limit or 'all'}; "
          "accuracy % ± stderr (flowcore.grading)\n")
    print(table(rows, tasks))
    if missing:
        print("\nmissing SFT adapters:\n  " + "\n  ".join(missing) + f"\nmake them with: {MAKE_ADAPTERS}",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
