"""Turn the service's results into Markdown / HTML for the UI (pure functions, no model)."""
from __future__ import annotations

import html
import json
from pathlib import Path

from flowcore.eval.evaluate import PAPER_TABLE1, comparisons_table, markdown_table
from flowcore.online import heldout

from .services import REPRODUCE_CMD, Answer, FlowView, PairView

END_REASONS = {
    "eos": "the Answer LLM ended its answer (end-of-turn token)",
    "stop": "the Stop LLM said Yes (P(Yes) above the threshold)",
    "max_steps": "it reached the maximum number of chunks",
}


def notice(text: str) -> str:
    return f"⚠️ {text}" if text else ""


def _grade_line(correct: bool | None, extracted: str | None, gold: str) -> str:
    answer = f"answer `{extracted}`" if extracted is not None else "no final answer found"
    if correct is None:
        return f"**not graded** (no gold answer) · {answer}"
    mark = "✓ **correct**" if correct else "✗ **incorrect**"
    return f"{mark} · {answer} · gold `{gold}`"


# ---------------------------------------------------------------- Compare

def answer_column(a: Answer) -> str:
    head = f"### {a.label}\n"
    if a.status == "missing":
        return head + f"⚠️ {a.message}"
    if a.status == "waiting":
        return head + "… waiting for its turn"
    if a.status == "running":
        status = f"… generating: {a.n_tokens} tokens so far"
    else:
        ended = "stopped at the token limit" if a.end_reason == "max_steps" else "ended its answer"
        status = f"{_grade_line(a.correct, a.extracted, a.gold)} · {a.n_tokens} tokens, {ended}"
    text = a.text if a.text.strip() else "*(only whitespace so far)*"
    return head + status + "\n\n---\n\n" + text


# ---------------------------------------------------------------- Flow

def flow_status(view: FlowView) -> str:
    n = len(view.chunks)
    if view.phase == "flow" and view.trace is None:
        return f"… Running the flow: {n} chunk(s) so far · {view.seconds:.1f}s"
    t = view.trace
    line = (f"**Flow finished** after {n} chunk(s), {t.n_tokens} tokens, {view.seconds:.1f}s: "
            f"{END_REASONS.get(t.end_reason, t.end_reason)}.  \n"
            f"{_grade_line(t.correct if view.problem.gold else None, t.extracted, view.problem.gold)}")
    if view.phase == "rollouts":
        line += f"  \n… Running {view.rollouts} rollout(s) at each of the {n} node(s)"
    elif view.exploration is not None:
        line += (f"  \nRollouts: {len(view.exploration.rollouts)} in {view.rollout_seconds:.1f}s "
                 f"(each branches off the flow above at its node and is played out to its end).")
    return line


def _pyes_html(p_yes: float | None, threshold: float, eos: bool) -> str:
    if p_yes is None:
        why = "not asked: the Answer LLM ended its turn" if eos else "not asked"
        return f'<span class="fc-pyes fc-muted">Stop LLM {why}</span>'
    decision = "Yes → stop" if p_yes > threshold else "No → continue"
    return (f'<span class="fc-pyes">Stop LLM P(Yes) = <b>{p_yes:.3f}</b> ({decision})'
            f'<span class="fc-bar"><span style="width:{100 * p_yes:.0f}%"></span></span></span>')


def flow_chunks_placeholder() -> str:
    return '<div class="fc-flow fc-muted">The flow\'s chunks appear here as they are written.</div>'


def rollouts_placeholder() -> str:
    return ('<div class="fc-muted">After the flow: the rollouts at each node, and which of them became '
            'DPO pairs.</div>')


def flow_chunks(view: FlowView) -> str:
    if not view.chunks:
        return flow_chunks_placeholder()
    parts = ['<div class="fc-flow">']
    for k, c in enumerate(view.chunks, 1):
        parts.append(
            f'<div class="fc-chunk"><div class="fc-chunk-head"><span class="fc-tag">chunk {k}</span>'
            f'<span class="fc-muted">{len(c.token_ids)} tokens</span>{_pyes_html(c.p_yes, view.stop_threshold, c.eos)}'
            f'</div><div class="fc-text">{html.escape(c.text) or "<i>(empty)</i>"}</div></div>'
        )
    if view.trace is not None:
        parts.append(f'<div class="fc-end">Flow ended: {html.escape(END_REASONS.get(view.trace.end_reason, view.trace.end_reason))}.</div>')
    parts.append("</div>")
    return "".join(parts)


def _outcome(correct: bool, graded: bool = True) -> str:
    if not graded:
        return '<span class="fc-muted">not graded</span>'
    return '<span class="fc-ok">correct</span>' if correct else '<span class="fc-bad">incorrect</span>'


def _clip(text: str, n: int = 600) -> str:
    text = text or ""
    return html.escape(text if len(text) <= n else "…" + text[-n:])


def _pair_block(p: dict) -> str:
    """One DPO pair (a ``Pair``'s fields, or a ``pairs.jsonl`` row): why it exists, chosen beside rejected."""
    who = "Answer LLM" if p["role"] == "answer" else "Stop LLM"
    return (f'<div class="fc-pair"><div class="fc-label">DPO pair for the {who}: {html.escape(p["reason"])}</div>'
            f'<div class="fc-pair-grid"><div><b>chosen</b> ({_outcome(p.get("chosen_correct", True))})'
            f'<div class="fc-text">{_clip(p["chosen_text"])}</div></div>'
            f'<div><b>rejected</b> ({_outcome(p.get("rejected_correct", False))})'
            f'<div class="fc-text">{_clip(p["rejected_text"])}</div></div></div></div>')


def run_pair_html(view: PairView) -> str:
    """A pair of a training run's ``pairs.jsonl``: the problem, the flow it was explored from, the pair."""
    if view.pair is None:
        return f'<div class="fc-muted">{html.escape(view.message or "No pair to show.")}</div>'
    p, o = view.pair, view.original or {}
    kind = "Answer LLM" if p["role"] == "answer" else "Stop LLM"
    parts = [f'<div class="fc-summary"><b>{kind} pair {view.number} of {view.total}</b> in run '
             f'<code>{html.escape(view.run)}</code>: training example {p["index"] + 1} '
             f'(<code>{html.escape(p["example_id"])}</code>), node {p["node"] + 1}.</div>']
    if view.message:
        parts.append(f'<div class="fc-muted">{html.escape(view.message)}</div>')
    if view.question:
        parts.append(f'<div class="fc-label">problem</div><div class="fc-text">{html.escape(view.question)}</div>')
    if o.get("completion") is not None:
        answer = "no final answer" if o.get("extracted") is None else f"answer {html.escape(str(o['extracted']))}"
        parts.append(f'<div class="fc-label">the flow it was explored from ({o.get("n_chunks")} chunk(s), ended by '
                     f'{html.escape(str(o.get("end_reason")))}, {answer}, gold {html.escape(str(o.get("gold")))}, '
                     f'{_outcome(bool(o.get("correct")))})</div><div class="fc-text">{_clip(o["completion"], 1200)}</div>')
    parts.append(_pair_block(p))
    return "".join(parts)


def rollouts_html(view: FlowView) -> str:
    if view.exploration is None:
        if view.phase == "rollouts":
            return '<div class="fc-muted">Rollouts are running…</div>'
        if view.message:
            return f'<div class="fc-muted">{html.escape(view.message)}</div>'
        return rollouts_placeholder()
    ex = view.exploration
    trace = ex.trace
    graded = bool(view.problem.gold)  # without a gold answer nothing is graded, so no pair can form
    pairs = list(ex.pairs)
    n_answer = sum(p.role == "answer" for p in pairs)
    answer = "no final answer" if trace.extracted is None else f"answer {html.escape(trace.extracted)}"
    parts = [f'<div class="fc-summary"><b>{len(ex.rollouts)} rollout(s) over {len(trace.chunks)} node(s); '
             f'{len(pairs)} DPO pair(s): {n_answer} for the Answer LLM, {len(pairs) - n_answer} for the Stop LLM.</b> '
             f'The original flow was {_outcome(trace.correct, graded)} ({answer}).</div>']
    if not graded:
        parts.append('<div class="fc-muted">No gold answer: nothing is graded, so no DPO pairs (a pair needs a '
                     'correct and a wrong outcome). Give a gold answer to see pairs.</div>')
    elif not pairs:
        parts.append('<div class="fc-muted">No DPO pairs: every rollout ended with the same correctness as '
                     'the original flow, and ties give no pair.</div>')
    for k, chunk in enumerate(trace.chunks):
        node_rollouts = [r for r in ex.rollouts if r.node == k]
        node_pairs = [p for p in pairs if p.node == k]
        parts.append(f'<div class="fc-node"><div class="fc-node-head">Node {k + 1}</div>'
                     f'<div class="fc-label">original chunk</div><div class="fc-text">{_clip(chunk["text"])}</div>')
        for j, r in enumerate(node_rollouts, 1):
            answer = "no final answer" if r.extracted is None else f"answer {html.escape(r.extracted)}"
            parts.append(
                f'<div class="fc-rollout"><div class="fc-label">rollout {j}: ended by '
                f'{html.escape(str(r.end_reason))}, {answer}, {_outcome(r.correct, graded)}</div>'
                f'<div class="fc-text">{_clip(r.chunk_text)}</div></div>')
        parts.extend(_pair_block(vars(p)) for p in node_pairs)
        parts.append("</div>")
    return "".join(parts)


# ---------------------------------------------------------------- Training

def _table_rows(obj) -> list[dict] | None:
    if isinstance(obj, list) and obj and all(isinstance(r, dict) for r in obj):
        return obj
    if isinstance(obj, dict):
        for key in ("rows", "table", "ours", "results"):
            if key in obj:
                rows = _table_rows(obj[key])
                if rows:
                    return rows
    return None


def app_figure(fig):
    """The chart as the app shows it: as wide as the page."""
    if fig is not None:
        fig.update_layout(width=None, autosize=True)
    return fig


def paper_table() -> str:
    return ("**Paper, Table 1** (accuracy %, Deng & Mineiro 2024, arXiv 2410.22304)\n\n"
            + markdown_table(PAPER_TABLE1))


def _cost_rows(cells: object) -> list[dict]:
    """Mean tokens and seconds per problem of a held-out table's ``cells[set][model]`` (none: [])."""
    if not isinstance(cells, dict):
        return []
    return [{"data": name, "model": heldout.MODELS.get(model, model), "tokens": c["mean_tokens"],
             "seconds": c["seconds_per_problem"]}
            for name, by_model in cells.items() if isinstance(by_model, dict)
            for model, c in by_model.items() if isinstance(c, dict) and "mean_tokens" in c]


def _table_extras(obj: dict) -> list[str]:
    """The paired tests, the cost per problem (a ``heldout`` table) and the provenance line of a table.json
    (absent keys: nothing)."""
    parts = []
    if obj.get("comparisons"):
        parts.append("Paired tests (exact McNemar, same problems):\n\n" + comparisons_table(obj["comparisons"]))
    cost = _cost_rows(obj.get("cells"))
    if cost:
        parts.append("Cost per problem (mean generated tokens; seconds):\n\n" + markdown_table(cost))
    if obj.get("command"):
        model = (obj.get("settings") or {}).get("model", "?")
        parts.append(f"Made by `{obj['command']}` on {obj.get('started', '?')}, model `{model}`, "
                     f"git {str(obj.get('git_commit') or '?')[:10]}.")
    return parts


def _tables_markdown(tables: list[tuple[Path, object]], label: str) -> str:
    parts = []
    for path, obj in tables:
        parts.append(f"**{label}** (`{path}`)\n")
        if isinstance(obj, Exception):
            parts.append(f"⚠️ could not read it: {obj}")
            continue
        rows = _table_rows(obj)
        if rows:
            parts.append(markdown_table(rows))
            if isinstance(obj, dict):
                parts += _table_extras(obj)
        elif (path.parent / "table.md").is_file():
            parts.append((path.parent / "table.md").read_text())
        else:
            parts.append("```json\n" + json.dumps(obj, indent=1)[:4000] + "\n```")
    return "\n\n".join(parts)


def results_tables(tables: list[tuple[Path, object]], results_root: str) -> str:
    if not tables:
        return (f"**Ours: no results yet.** No `{results_root}/*/table.json` exists. "
                f"Make it with `{REPRODUCE_CMD}` (it writes `results/cpu/table.json`).")
    return _tables_markdown(tables, "Ours")


def heldout_tables(tables: list[tuple[Path, object]], command: str) -> str:
    """A run's held-out evaluation (trained flow, untrained flow, zero-shot on test sets), or how to make it."""
    if not tables:
        return (f"No held-out evaluation of this run yet. Make it with `{command}` "
                f"(the full GSM8K test and MATH500 by default; hours on a CPU).")
    return _tables_markdown(tables, "Held-out evaluation")
