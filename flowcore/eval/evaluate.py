"""Evaluate single models (the base zero-shot, SFT adapters) on fixed test subsets, and tabulate them.

Every model answers with the same Answer prompt, decoding and token budget as
the zero-shot baseline (``flow.zero_shot_config``: one model, no Stop LLM),
batched by the flow engine (``flowcore.flow.engines``; an SFT adapter is loaded
under a name, which ``single_model_config`` makes the Answer role), graded by
``flowcore.grading``. Per-problem results go to ``<dir>/<model>/<set>.jsonl``
(resumable, with a meta file).

The table gives each model's accuracy with its 95% Wilson interval, and an
exact McNemar test on the same problems between the Flow-generated SFT model
and every other row.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from flowcore import data, stats
from flowcore.flow.engine import FlowConfig, FlowEngine, zero_shot_config
from flowcore.flow.generate import solve_into
from flowcore.results import ResultsFile

ZERO_SHOT = "zero_shot"
MODELS = (ZERO_SHOT, "ground_truth", "self_generated", "flow_generated")  # row keys (= SFT trace sources)
LABELS = {ZERO_SHOT: "0-shot", "ground_truth": "SFT ground truth", "self_generated": "SFT self-generated",
          "flow_generated": "SFT Flow-generated"}
COMPARE_TO = "flow_generated"

# Paper Table 1 (accuracy %): Llama-3-8B-Instruct and Phi-3-medium, not our model.
PAPER_TABLE1 = [
    {"model": "Llama-3-8B-Instruct", "data": "GSM8K", "0-shot": 48.9, "SFT ground truth": 67.2,
     "SFT self-generated": 68.8, "SFT Flow-generated": 71.3},
    {"model": "Llama-3-8B-Instruct", "data": "MATH", "0-shot": 22.3, "SFT ground truth": 25.1,
     "SFT self-generated": 24.2, "SFT Flow-generated": 27.8},
    {"model": "Phi-3-medium", "data": "MATH", "0-shot": 35.4, "SFT ground truth": 36.3,
     "SFT self-generated": 36.5, "SFT Flow-generated": 38.6},
]


@dataclass(frozen=True)
class EvalSet:
    """A fixed evaluation subset: the first ``limit`` problems of a split (all if None), or of a JSONL file."""

    dataset: str
    split: str
    limit: int | None = None
    data_file: str | None = None

    @property
    def name(self) -> str:
        base = Path(self.data_file).stem if self.data_file else self.split
        return f"{self.dataset}-{base}" + (f"-first{self.limit}" if self.limit else "")

    def problems(self) -> list[data.Problem]:
        if self.data_file:
            return data.read_jsonl(self.data_file, self.dataset, "custom")[:self.limit]
        return data.load(self.dataset, self.split, self.limit)


def single_model_config(flow: FlowConfig, role: str | None) -> FlowConfig:
    """One model answers (``role``: an adapter name, None = the base model), no Stop LLM."""
    return replace(zero_shot_config(flow), answer_role=role)


def evaluate(engine: FlowEngine, role: str | None, problems: list[data.Problem], out: ResultsFile,
             flow: FlowConfig, desc: str) -> list[dict]:
    """Graded answers of the engine's adapter ``role`` (None: its base model) on ``problems`` (those already
    in ``out`` are kept); in problem order."""
    solve_into(engine.configured(single_model_config(flow, role)), problems, out, desc=desc)
    by_id = {r["problem_id"]: r for r in out.records}
    return [by_id[p.id] for p in problems]


def cell(records: list[dict]) -> dict:
    acc = stats.accuracy([r["correct"] for r in records])
    return {**acc, "answered": sum(r["extracted"] is not None for r in records)}


def pct(acc: dict) -> str:
    lo, hi = acc["ci95"]
    return f"{100 * acc['accuracy']:.1f} [{100 * lo:.1f}-{100 * hi:.1f}]"


def table(outcomes: dict[str, dict[str, list[dict]]]) -> dict:
    """``outcomes[set name][row key]`` = per-problem records in one problem order -> table.json's content.

    One row per model (0-shot and the three SFT sources), one column per
    evaluation set (accuracy % [95% interval]), then the paper's Table 1 numbers
    for the same row (other models: for the ordering, not the level).
    """
    cells = {name: {m: cell(recs) for m, recs in by_model.items()} for name, by_model in outcomes.items()}
    rows = []
    for m in MODELS:
        row = {"model": LABELS[m]}
        row.update({name: pct(cells[name][m]) if m in cells[name] else "—" for name in outcomes})
        row.update({f"paper {p['model']} {p['data']}": p[LABELS[m]] for p in PAPER_TABLE1})
        rows.append(row)
    comparisons = []
    for name, by_model in outcomes.items():
        if COMPARE_TO not in by_model:
            continue
        flow = [r["correct"] for r in by_model[COMPARE_TO]]
        for m in MODELS:
            if m == COMPARE_TO or m not in by_model:
                continue
            test = stats.mcnemar(flow, [r["correct"] for r in by_model[m]])
            comparisons.append({"data": name, "a": LABELS[COMPARE_TO], "b": LABELS[m],
                                "a_only_correct": test["only_a"], "b_only_correct": test["only_b"],
                                "p_value": test["p_value"]})
    return {"rows": rows, "cells": cells, "comparisons": comparisons, "paper": PAPER_TABLE1}


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table of dict rows (columns: every key, in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def comparisons_table(comparisons: list[dict]) -> str:
    """Paired tests as rows; a comparison with a paired ``difference`` and its ``ci95`` shows them too."""
    return markdown_table([{"data": c["data"], "comparison": f"{c['a']} vs {c['b']}",
                            **({"A - B, points [95% CI]": f"{100 * c['difference']:+.1f} [{100 * c['ci95'][0]:+.1f}, "
                                                          f"{100 * c['ci95'][1]:+.1f}]"} if "difference" in c else {}),
                            "only A right": c["a_only_correct"], "only B right": c["b_only_correct"],
                            "p": f"{c['p_value']:.3g}"} for c in comparisons])


def markdown(tab: dict) -> str:
    """table.md: ours (accuracy % [95% CI]), the paired tests, the paper's Table 1."""
    parts = ["**Ours**: accuracy % [95% Wilson interval]; the paper's Table 1 beside (other, larger models)",
             markdown_table(tab["rows"])]
    if tab["comparisons"]:
        parts += ["**Paired (exact McNemar) tests on the same problems**", comparisons_table(tab["comparisons"])]
    parts += ["**Paper, Table 1** (accuracy %, other models)", markdown_table(tab["paper"])]
    return "\n\n".join(parts) + "\n"


def figure(tab: dict, title: str):
    """Grouped bars: accuracy of the four models per evaluation set, 95% intervals as error bars."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for m in MODELS:
        xs, ys, lo, hi = [], [], [], []
        for set_name, by_model in tab["cells"].items():
            if m in by_model:
                c = by_model[m]
                xs.append(set_name)
                ys.append(100 * c["accuracy"])
                lo.append(100 * (c["accuracy"] - c["ci95"][0]))
                hi.append(100 * (c["ci95"][1] - c["accuracy"]))
        fig.add_trace(go.Bar(x=xs, y=ys, name=LABELS[m],
                             error_y={"type": "data", "array": hi, "arrayminus": lo, "visible": True}))
    fig.update_layout(barmode="group", title=title, yaxis_title="accuracy (%), 95% interval",
                      yaxis={"range": [0, 100]}, template="plotly_white", width=900, height=520)
    return fig
