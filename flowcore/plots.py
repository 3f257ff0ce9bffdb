"""Progressive-accuracy chart of a run (paper Figures 3-4), from the run's files only.

Three curves over the run's example order, cumulative accuracy after N
examples: online Flow-DPO (``progress.jsonl``: each example predicted before
any update using it), the untrained flow and the single model zero-shot
(``baseline_flow.jsonl``, ``baseline_zero_shot.jsonl`` from
``python -m flowcore baselines``). A baseline that is only partly done is drawn
over the examples it has reached (the longest prefix of the order).

``python -m flowcore plot --run runs/NAME`` writes ``chart.html`` (with
``plotly.min.js`` beside it, so it opens offline) and ``chart.png`` (kaleido, which
drives a Chrome/Chromium browser; Debian: ``apt-get install chromium``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import stats
from .baselines import FILES, run_config
from .results import read_jsonl

CURVES = (("Flow-DPO (online)", "progress.jsonl"), ("untrained flow", FILES["flow"]),
          ("zero-shot", FILES["zero-shot"]))


def progressive_curve(correct_in_order: list[bool]) -> list[float]:
    """Cumulative accuracy (%) after 1, 2, ... examples."""
    out, k = [], 0
    for n, c in enumerate(correct_in_order, 1):
        k += bool(c)
        out.append(100.0 * k / n)
    return out


def run_curves(run_dir: str | Path) -> dict[str, list[bool]]:
    """Correctness per example in the run's order for each curve; FileNotFoundError names the missing command."""
    run = Path(run_dir)
    config = run_config(run)
    order = config["example_ids"]
    curves = {}
    for name, file in CURVES:
        path = run / file
        if not path.is_file():
            cmd = (f"python -m flowcore train ... --out {run} --resume" if file == "progress.jsonl"
                   else f"python -m flowcore baselines --run {run}")
            raise FileNotFoundError(f"{path} not found: run `{cmd}` first")
        by_id = {r["problem_id"]: bool(r["correct"]) for r in read_jsonl(path)}
        seq = []
        for pid in order:
            if pid not in by_id:
                break
            seq.append(by_id[pid])
        curves[name] = seq
    return curves


def progressive_figure(run_dir: str | Path):
    """plotly Figure: cumulative progressive accuracy vs examples seen, three curves."""
    import plotly.graph_objects as go

    run = Path(run_dir)
    curves = run_curves(run)
    model = run_config(run)["settings"]["model"]
    fig = go.Figure()
    for (name, seq), dash in zip(curves.items(), ("solid", "dash", "dot")):
        acc = stats.accuracy(seq)
        label = f"{name}: {stats.fmt(acc)}" if seq else f"{name}: no examples yet"
        fig.add_trace(go.Scatter(x=list(range(1, len(seq) + 1)), y=progressive_curve(seq), mode="lines",
                                 name=label, line={"dash": dash, "width": 2}))
    fig.update_layout(title=f"Progressive validation accuracy — {run.name} ({model})",
                      xaxis_title="examples seen", yaxis_title="cumulative accuracy (%)",
                      yaxis={"range": [0, 100]}, template="plotly_white",
                      legend={"orientation": "h", "yanchor": "bottom", "y": -0.35}, width=900, height=560)
    return fig


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m flowcore plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory (runs/NAME)")
    p.add_argument("--no-png", action="store_true", help="write chart.html only")
    args = p.parse_args(argv)
    run = Path(args.run)
    try:
        fig = progressive_figure(run)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
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
