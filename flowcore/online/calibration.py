"""`python -m flowcore calibration`: how well the Stop LLM's P(Yes) predicts that the answer so far is right.

From trace files (``generate``'s or ``baselines``' JSONL: ``chunks`` with ``text`` and ``p_yes``), every
prefix ``chunks[:k+1]`` is a Stop decision. Its partial answer (the chunks' text joined, as
``rollouts.stop_pairs`` grades a "stop here" counterfactual) is graded with ``flowcore.grading``, and P(Yes)
is set against that grade:

- a reliability table: P(Yes) in ten bins, per bin the decisions, the fraction whose partial answer is
  correct, and the mean P(Yes) (calibrated: the two agree);
- Brier score (mean squared gap between P(Yes) and the grade), and AUROC (the chance that a correct partial
  answer gets a higher P(Yes) than a wrong one; ties count half; 0.5 = no ranking);
- all of it for every decision, and split into mid-answer prefixes and the last chunk of a trace.

A trace's Stop LLM is not asked after the chunk where the Answer LLM ended its turn (unless the flow ran with
``--stop-at-eos``): those decisions have no P(Yes) in the file and are counted as ``never asked``. With
``--model`` (and ``--adapters`` for a trained Stop LLM) the Stop LLM is asked here about every prefix of the
traces, the last chunk included, and its P(Yes) replaces the file's.

Writes ``OUT.json`` (provenance, the tables, every decision) and ``OUT.md`` (the tables).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from flowcore.flow.engines import ENGINES
from flowcore import data, grading, models, results
from flowcore.cli import HelpFormatter

BINS = 10  # equal-width P(Yes) bins of the reliability table


@dataclass
class Decision:
    """One Stop decision: after chunk ``k`` of a trace, with the grade of the partial answer ``chunks[:k+1]``."""

    problem_id: str
    k: int
    last: bool  # k is the trace's last chunk
    end_reason: str  # how the trace ended
    p_yes: float | None  # None: the Stop LLM was not asked here
    correct: bool  # the partial answer already holds the correct final answer
    extracted: str | None


def partial_answer(chunks: list[dict], k: int) -> str:
    return "".join(c["text"] for c in chunks[:k + 1])


def decisions(records: list[dict]) -> list[Decision]:
    """Every prefix of every trace, graded, with the P(Yes) the trace recorded there."""
    out = []
    for r in records:
        n = len(r["chunks"])
        for k, chunk in enumerate(r["chunks"]):
            g = grading.grade(partial_answer(r["chunks"], k), r["gold"], r["dataset"])
            out.append(Decision(r["problem_id"], k, k == n - 1, r["end_reason"], chunk.get("p_yes"),
                                g.correct, g.extracted))
    return out


def ask_stop(engine, records: list[dict], problems: dict[str, data.Problem]) -> list[list[float]]:
    """P(Yes) of the engine's Stop LLM after every chunk of every trace (``[trace][k]``).

    The traces go ``batch_size`` at a time and a trace's prefixes in order, so each Stop pass reuses its
    trace's Stop cache of the prefix before (as in a flow) and encodes only the new chunk.
    """
    from flowcore.flow.state import Chunk, FlowState

    probs: list[list[float]] = []
    for start in range(0, len(records), engine.cfg.batch_size):
        batch = records[start:start + engine.cfg.batch_size]
        states = [FlowState(problems[r["problem_id"]]) for r in batch]
        found = [[] for _ in batch]
        for k in range(max(len(r["chunks"]) for r in batch)):
            now = [i for i, r in enumerate(batch) if k < len(r["chunks"])]
            for i in now:
                text = batch[i]["chunks"][k]["text"]
                states[i].chunks.append(Chunk(engine.tok(text, add_special_tokens=False).input_ids, text))
            for i, p in zip(now, engine.stop_probs([states[i] for i in now])):
                found[i].append(p)
        probs += found
        print(f"[calibration] asked {start + len(batch)}/{len(records)} traces", file=sys.stderr)
    return probs


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """P(score of a positive > score of a negative), ties half; None without both classes."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def table(ds: list[Decision], threshold: float = 0.5) -> dict:
    """Reliability table and scores of the decisions that were asked; counts of those never asked."""
    asked = [d for d in ds if d.p_yes is not None]
    never = [d for d in ds if d.p_yes is None]
    bins = []
    for b in range(BINS):
        lo, hi = b / BINS, (b + 1) / BINS
        inside = [d for d in asked if lo <= d.p_yes < hi or (b == BINS - 1 and d.p_yes == 1.0)]
        bins.append({"bin": f"{lo:.1f}-{hi:.1f}", "n": len(inside),
                     "correct": sum(d.correct for d in inside),
                     "frac_correct": _mean([d.correct for d in inside]),
                     "mean_p_yes": _mean([d.p_yes for d in inside])})
    yes = [d for d in asked if d.p_yes > threshold]
    return {
        "decisions": len(ds), "asked": len(asked), "never_asked": len(never),
        "never_asked_correct": sum(d.correct for d in never),
        "correct": sum(d.correct for d in asked), "mean_p_yes": _mean([d.p_yes for d in asked]),
        "brier": _mean([(d.p_yes - d.correct) ** 2 for d in asked]),
        "auroc": auroc([d.p_yes for d in asked], [d.correct for d in asked]),
        "says_yes": len(yes), "says_yes_correct": sum(d.correct for d in yes),
        "bins": bins,
    }


def _mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


def report(ds: list[Decision], threshold: float = 0.5) -> dict:
    """The table for all decisions, for mid-answer prefixes, and for the traces' last chunks."""
    return {"all": table(ds, threshold), "mid-answer": table([d for d in ds if not d.last], threshold),
            "last chunk": table([d for d in ds if d.last], threshold)}


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(rep: dict, title: str, command: str, threshold: float = 0.5) -> str:
    lines = [f"# {title}", "", f"`{command}`", "",
             "| prefixes | decisions | asked | never asked (of them correct) | partial answer correct (asked) "
             f"| mean P(Yes) | Brier | AUROC | P(Yes) > {threshold} (of them correct) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, t in rep.items():
        lines.append(f"| {name} | {t['decisions']} | {t['asked']} | {t['never_asked']} ({t['never_asked_correct']}) "
                     f"| {t['correct']} | {_f(t['mean_p_yes'])} | {_f(t['brier'])} | {_f(t['auroc'])} "
                     f"| {t['says_yes']} ({t['says_yes_correct']}) |")
    for name, t in rep.items():
        if not t["asked"]:
            continue
        lines += ["", f"Reliability, {name} ({t['asked']} asked):", "",
                  "| P(Yes) | n | correct | fraction correct | mean P(Yes) |", "|---|---|---|---|---|"]
        lines += [f"| {b['bin']} | {b['n']} | {b['correct']} | {_f(b['frac_correct'], 2)} | {_f(b['mean_p_yes'])} |"
                  for b in t["bins"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m flowcore calibration", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("traces", nargs="+", help="trace JSONL files (generate, baselines)")
    p.add_argument("--out", required=True, help="output stem: writes OUT.json and OUT.md")
    p.add_argument("--limit", type=int, default=None, help="first N traces (of all files, in order)")
    p.add_argument("--model", default=None, help="ask this model's Stop LLM about every prefix (default: use the "
                                                 "files' P(Yes)); embedded name, local dir or hub id")
    p.add_argument("--adapters", default=None, help="with --model: directory with answer/ and stop/ peft adapters")
    p.add_argument("--split", default="test", help="with --model: the dataset split the traces' problems come from")
    p.add_argument("--dtype", choices=list(models.DTYPES), default="auto", help=models.DTYPE_HELP)
    p.add_argument("--device", choices=models.DEVICES, default="auto", help=models.DEVICE_HELP)
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="with --model: what runs it (auto: vLLM where installed, else hf; docs/engine.md)")
    p.add_argument("--batch-size", type=int, default=16, help="with --model: traces asked about together")
    p.add_argument("--stop-threshold", type=float, default=0.5, help="the flow's threshold, for the 'says Yes' column")
    args = p.parse_args(argv)

    records = [r for path in args.traces for r in results.read_jsonl(path)][:args.limit]
    if not records:
        print("error: no traces in " + ", ".join(args.traces), file=sys.stderr)
        return 1
    command = results.cli_command("calibration", argv)
    settings = {"traces": args.traces, "limit": args.limit, "model": args.model, "adapters": args.adapters,
                "split": args.split, "stop_threshold": args.stop_threshold}
    prov = results.provenance(settings, command)  # "started": now, before the model runs
    ds = decisions(records)
    runtime = None
    if args.model:
        from flowcore.flow import engines
        from flowcore.flow.state import FlowConfig

        try:
            wanted = {r["problem_id"] for r in records}
            problems = {q.id: q for ds_name in sorted({r["dataset"] for r in records})
                        for q in data.load(ds_name, args.split) if q.id in wanted}
            missing = wanted - problems.keys()
            if missing:
                raise data.DataError(f"{len(missing)} traces' problems are not in split {args.split!r}, "
                                     f"e.g. {sorted(missing)[0]}")
            cfg = FlowConfig(batch_size=args.batch_size, stop_threshold=args.stop_threshold)
            engine = engines.open_engine(args.model, cfg, engines.role_dirs(args.adapters), args.dtype,
                                         args.device, engine=args.engine)
        except (data.DataError, models.ModelError, ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        runtime = results.runtime(engine)
        asked = iter(prob for trace in ask_stop(engine, records, problems) for prob in trace)
        for d in ds:  # decisions() and ask_stop() walk the same traces and chunks in the same order
            d.p_yes = next(asked)
    rep = report(ds, args.stop_threshold)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results.write_json_atomic(f"{out}.json", {
        **prov, "runtime": runtime, "tables": rep,
        "decisions": [asdict(d) for d in ds]})
    who = f"{args.model} + {args.adapters or 'no adapters'}" if args.model else "P(Yes) as recorded in the traces"
    title = f"Stop LLM calibration: {who}, on {len(records)} traces of {', '.join(args.traces)}"
    Path(f"{out}.md").write_text(markdown(rep, title, command, args.stop_threshold), encoding="utf-8")
    a = rep["all"]
    print(f"{a['decisions']} decisions, {a['asked']} asked, {a['never_asked']} never asked; "
          f"Brier {_f(a['brier'])}, AUROC {_f(a['auroc'])}; written to {out}.json and {out}.md")
    return 0
