"""Progressive-accuracy chart of a run (paper Figures 3-4), from the run's files only.

Three curves over the run's example order, cumulative accuracy after N
examples: online Flow-DPO (``progress.jsonl``: each example predicted before
any update using it), the untrained flow and the single model zero-shot
(``baseline_flow.jsonl``, ``baseline_zero_shot.jsonl`` from
``python -m flowcore baselines``). A baseline that is only partly done is drawn
over the examples it has reached (the longest prefix of the order); one not
started yet is listed as "not reached yet".

``python -m flowcore plot --run runs/NAME`` writes ``chart.html`` (with
``plotly.min.js`` beside it, so it opens offline) and ``chart.png`` (kaleido, which
drives a Chrome/Chromium browser; Debian: ``apt-get install chromium``), and
prints and writes ``summary.json`` (``run_summary``): each curve's accuracy and dtype, the
trained flow minus each baseline on the same examples (all of them, and only
those predicted after the first DPO step), pairs, DPO steps and seconds per
example, per round and in all, and ``diagnostics`` (see that module).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flowcore.cli import HelpFormatter
from flowcore.online import diagnostics
from flowcore import stats
from flowcore.online.baselines import FILES, run_config
from flowcore.results import read_jsonl

CURVES = (("Flow-DPO (online)", "progress.jsonl"), ("untrained flow", FILES["flow"]),
          ("zero-shot", FILES["zero-shot"]))


def progressive_curve(correct_in_order: list[bool]) -> list[float]:
    """Cumulative accuracy (%) after 1, 2, ... examples."""
    out, k = [], 0
    for n, c in enumerate(correct_in_order, 1):
        k += bool(c)
        out.append(100.0 * k / n)
    return out


def cumulative_interval(correct_in_order: list[bool]) -> tuple[list[float], list[float]]:
    """The 95% Wilson interval (%) of the cumulative accuracy after 1, 2, ... examples: (lower, upper)."""
    lo, hi, k = [], [], 0
    for n, c in enumerate(correct_in_order, 1):
        k += bool(c)
        a, b = stats.wilson(k, n)
        lo.append(100.0 * a)
        hi.append(100.0 * b)
    return lo, hi


def run_records(run: Path) -> dict[str, list[dict]]:
    """Each curve's records (a baseline not started yet: none); a missing ``progress.jsonl`` is a
    FileNotFoundError that names the command to run."""
    if not (run / CURVES[0][1]).is_file():
        raise FileNotFoundError(f"{run / CURVES[0][1]} not found: run `python -m flowcore train ... --out {run} --resume` first")
    return {name: read_jsonl(run / file) for name, file in CURVES}


def curves_in_order(records: dict[str, list[dict]], order: list[str]) -> dict[str, list[bool]]:
    """Correctness per example in the run's order for each curve: the longest prefix of the order it has."""
    curves = {}
    for name, recs in records.items():
        by_id = {r["problem_id"]: bool(r["correct"]) for r in recs}
        seq = []
        for pid in order:
            if pid not in by_id:
                break
            seq.append(by_id[pid])
        curves[name] = seq
    return curves


def rounds(progress: list[dict], untrained: list[bool], size: int) -> list[dict]:
    """Per round of ``size`` examples: progressive correct, the untrained flow on the same examples, pairs made,
    the DPO steps logged at the round's end (loss, reward accuracy), seconds per example, and each process's
    explore seconds (``[]`` in runs from before they were logged): their spread is time a process waited."""
    out = []
    for start in range(0, len(progress), size):
        g, end = progress[start:start + size], min(start + size, len(progress))
        out.append({"examples": [start, end - 1], "correct": sum(p["correct"] for p in g),
                    "untrained_flow_correct": sum(untrained[start:end]) if len(untrained) >= end else None,
                    "answer_pairs": sum(p["n_answer_pairs"] for p in g), "stop_pairs": sum(p["n_stop_pairs"] for p in g),
                    "steps": [{k: s[k] for k in ("role", "step", "pairs", "loss", "reward_accuracy")}
                              for p in g for s in p["losses"]],
                    "seconds_per_example": round(sum(p["seconds"] for p in g) / len(g), 1),
                    "explore_seconds": [t for p in g for t in p.get("explore_seconds", [])]})
    return out


def progress_numbers(progress: list[dict]) -> dict:
    """From ``progress.jsonl`` alone: the example whose line logs the first DPO step, the first example predicted
    after it (``after``), pairs, DPO steps per adapter and seconds per example."""
    n = len(progress)
    steps = [s for p in progress for s in p["losses"]]
    # the steps after a round are logged on its last example: later examples were predicted by updated adapters
    first = next((p["index"] for p in progress if p["losses"]), None)
    answer_pairs = sum(p["n_answer_pairs"] for p in progress)
    stop_pairs = sum(p["n_stop_pairs"] for p in progress)
    return {"first_step_after_example": first, "after": first + 1 if first is not None else n,
            "pairs": {"answer": answer_pairs, "stop": stop_pairs,
                      "per_example": round((answer_pairs + stop_pairs) / n, 3) if n else 0.0},
            "dpo_steps": {role: sum(1 for s in steps if s["role"] == role) for role in ("answer", "stop")},
            "seconds_per_example": round(sum(p["seconds"] for p in progress) / n, 1) if n else 0.0}


def run_summary(run_dir: str | Path) -> dict:
    """The run's numbers, from its files: accuracies, paired differences vs the baselines, pairs, steps, time."""
    run = Path(run_dir)
    config = run_config(run)
    records = run_records(run)
    curves = curves_in_order(records, config["example_ids"])
    settings = config["settings"]
    progress = records[CURVES[0][0]]
    online = curves[CURVES[0][0]]
    numbers = progress_numbers(progress)
    n, after = len(progress), numbers["after"]
    comparisons = {}
    for name, seq in list(curves.items())[1:]:
        m = min(len(online), len(seq))
        comparisons[name] = {"all": stats.paired_difference(online[:m], seq[:m]),
                             "after_first_step": stats.paired_difference(online[after:m], seq[after:m])}
    return {
        "run": str(run), "examples": n, "planned_examples": len(config["example_ids"]),
        "dtype": run_dtypes(run, config),
        "accuracy": {name: stats.accuracy(seq) for name, seq in curves.items()},
        "trained_minus_baseline": comparisons,
        **{k: numbers[k] for k in ("first_step_after_example", "pairs", "dpo_steps", "seconds_per_example")},
        "rounds": rounds(progress, curves[CURVES[1][0]], settings["dpo"]["group_size"] * settings["world_size"]),
        "diagnostics": diagnostics.diagnostics(progress, read_jsonl(run / "pairs.jsonl"), records[CURVES[1][0]],
                                               records[CURVES[2][0]], after),
    }


def run_dtypes(run: Path, config: dict) -> dict[str, str | None]:
    """The dtype each curve was computed in (None: not recorded, as in runs from before it was)."""
    metas = {name: run / file.replace(".jsonl", ".meta.json") for name, file in CURVES[1:]}
    return {CURVES[0][0]: config.get("runtime", {}).get("dtype"),
            **{name: json.loads(path.read_text()).get("runtime", {}).get("dtype") if path.is_file() else None
               for name, path in metas.items()}}


def examples_done(done: int, planned: int) -> str:
    """"400 examples", or "288 of 400 examples (unfinished)" for a run that has not reached its end."""
    return f"{done} examples" if done >= planned else f"{done} of {planned} examples (unfinished)"


def describe(summary: dict) -> str:
    lines = [f"{summary['run']}: {examples_done(summary['examples'], summary['planned_examples'])}, "
             f"{summary['pairs']['per_example']} pairs per example "
             f"({summary['pairs']['answer']} Answer, {summary['pairs']['stop']} Stop), DPO steps "
             f"{summary['dpo_steps']}, {summary['seconds_per_example']} s per example"]
    lines += [f"  {name}: {stats.fmt(acc) if acc['n'] else 'not reached yet (python -m flowcore baselines)'}"
              for name, acc in summary["accuracy"].items()]
    first = summary["first_step_after_example"]
    for name, c in summary["trained_minus_baseline"].items():
        if not c["all"]["n"]:
            continue
        lines.append(f"  Flow-DPO minus {name}, all examples: {stats.fmt_difference(c['all'])}")
        lines.append(f"  Flow-DPO minus {name}, examples after the first DPO step "
                     f"({'none yet' if first is None else f'index > {first}'}): "
                     f"{stats.fmt_difference(c['after_first_step'])}")
    return "\n".join(lines + diagnostics.describe(summary["diagnostics"]))


def progressive_figure(run_dir: str | Path):
    """plotly Figure: cumulative progressive accuracy vs examples seen, three curves (``fig.data[:3]``), each
    with its pointwise 95% Wilson band (the traces after them)."""
    import plotly.graph_objects as go

    run = Path(run_dir)
    config = run_config(run)
    curves = curves_in_order(run_records(run), config["example_ids"])
    model, planned, done = config["settings"]["model"], len(config["example_ids"]), len(curves[CURVES[0][0]])
    fig = go.Figure()
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c")
    for (name, seq), dash, color in zip(curves.items(), ("solid", "dash", "dot"), colors):
        acc = stats.accuracy(seq)
        label = f"{name}: {stats.fmt(acc)}" if seq else f"{name}: not reached yet"
        fig.add_trace(go.Scatter(x=list(range(1, len(seq) + 1)), y=progressive_curve(seq), mode="lines",
                                 name=label, line={"dash": dash, "width": 2, "color": color}))
    for (name, seq), color in zip(curves.items(), colors):  # after the curves: fig.data[:3] are the curves
        if seq:
            lo, hi = cumulative_interval(seq)
            x = list(range(1, len(seq) + 1))
            fig.add_trace(go.Scatter(x=x + x[::-1], y=hi + lo[::-1], fill="toself", mode="lines",
                                     line={"width": 0}, fillcolor=color, opacity=0.15, hoverinfo="skip",
                                     name=f"{name}: 95% interval", showlegend=False))
    title = f"Progressive validation accuracy — {run.name} ({model})"
    if done < planned:
        title += f"<br><sub>{examples_done(done, planned)}</sub>"
    fig.update_layout(title=title,
                      xaxis_title="examples seen", yaxis_title="cumulative accuracy (%)",
                      yaxis={"range": [0, 100]}, template="plotly_white",
                      legend={"orientation": "h", "yanchor": "bottom", "y": -0.35}, width=900, height=560)
    return fig


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m flowcore plot", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--run", required=True, help="run directory (runs/NAME)")
    p.add_argument("--no-png", action="store_true", help="write chart.html only")
    args = p.parse_args(argv)
    run = Path(args.run)
    try:
        fig = progressive_figure(run)
        summary = run_summary(run)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    (run / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(describe(summary))
    print(f"wrote {run / 'summary.json'}")
    return 0 if write_figure(fig, run, "chart", png=not args.no_png) else 1


def write_figure(fig, directory: str | Path, stem: str, png: bool = True) -> bool:
    """``stem.html`` (plotly.min.js beside it, so it opens offline) and ``stem.png``; False if the PNG failed."""
    directory = Path(directory)
    fig.write_html(directory / f"{stem}.html", include_plotlyjs="directory")
    print(f"wrote {directory / (stem + '.html')}")
    if not png:
        return True
    try:
        fig.write_image(directory / f"{stem}.png")
    except Exception as e:  # kaleido missing, or no Chrome/Chromium for it to drive
        print(f"error: {stem}.png not written ({type(e).__name__}: {e}); install kaleido and Chromium, "
              "or pass --no-png", file=sys.stderr)
        return False
    print(f"wrote {directory / (stem + '.png')}")
    return True
