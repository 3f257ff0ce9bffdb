"""Compare the runs of a tuning sweep on one training stream: ``python -m flowcore sweep``.

The runs are ``train`` runs over the same seeded example order (``--examples N``
takes the first N of the order that a larger N would give, so a short run is a
prefix of a long one) with one or two settings changed. Everything comes from
the runs' files; nothing is trained or generated here. Per run:

- the settings that differ between the runs (lr, beta, chunk size, ...) and the dtype;
- progressive accuracy (each example predicted before any update on it), and
  the untrained flow on the same examples: the run's own ``baseline_flow.jsonl``,
  or another run's whose model, data, flow settings and dtype are the same (the
  untrained flow does not depend on the DPO settings), named in ``baseline``;
- trained minus untrained (paired 95% interval, exact McNemar p), over all the
  examples and over those predicted after the first DPO step, and how many
  examples got another final answer than the untrained flow's (how far the
  adapters moved the flow, right or wrong), before the first step and after it.
  Before it the adapters are exactly zero, so changes there come from the
  numerics of another batch composition (the online rounds decode other rows
  together than the baseline does; in bf16 that changes some greedy tokens):
  the floor that changes after the first step must be read against;
- Answer and Stop pairs per example, how many Stop pairs chose "Yes", how many
  rollouts ended with another outcome than the original flow (rollout diversity),
  DPO steps, and each adapter's reward accuracy on pairs it had not trained on:
  each step logs the share of its batch with a positive implicit reward margin
  before it updates, so from the second step on it is measured on new pairs by
  an adapter trained on earlier ones;
- seconds and CPU seconds per example, and pairs per CPU-hour (the evidence a
  setting buys per unit of compute; CPU time, from 2026-11-30 on, is the
  process's, all threads, so other load on the machine barely moves it);
- how many flows the Stop LLM ended (the others ran to ``max_steps`` or the
  Answer LLM ended them) and the answer tokens per example;
- every run after the first minus the first run, on the examples both predicted
  (the common start of their streams): paired 95% interval, exact McNemar p.

``--examples N`` compares every run on its first N examples only (a long run
beside a short one on the short one's examples); a run with fewer is an error.

It writes ``sweep.json`` and ``sweep.md`` (the table) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flowcore.cli import HelpFormatter
from flowcore import stats
from flowcore.online.baselines import FILES, run_config
from flowcore.online.plots import progress_numbers
from flowcore.results import provenance, read_jsonl, cli_command, write_json_atomic

FLOW_SETTINGS_IGNORED = ("batch_size",)  # how many flows decode together: not what they write


def flat(settings: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in settings.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def untrained_key(settings: dict, dtype: str | None) -> tuple:
    """What the untrained flow's outputs depend on: a run's model, data and flow settings, and the dtype."""
    flow = {k: v for k, v in settings["flow"].items() if k not in FLOW_SETTINGS_IGNORED}
    return (settings["model"], settings["dataset"], settings["split"], settings["source"], settings.get("data_file"),
            json.dumps(flow, sort_keys=True), dtype)


def find_baseline(run: Path, config: dict, done_ids: list[str], runs: list[Path]) -> tuple[Path | None, dict[str, dict]]:
    """The untrained flow's records by problem id: the run's own baseline, else a matching one of ``runs``."""
    want = untrained_key(config["settings"], config.get("runtime", {}).get("dtype"))
    for other in [run, *[r for r in runs if r != run]]:
        path = other / FILES["flow"]
        meta_path = path.with_suffix(".meta.json")
        if not (path.is_file() and meta_path.is_file()):
            continue
        # the baseline ran the settings of the run it belongs to, in the dtype its meta file records
        dtype = json.loads(meta_path.read_text()).get("runtime", {}).get("dtype")
        if untrained_key(run_config(other)["settings"], dtype) != want:
            continue
        by_id = {r["problem_id"]: r for r in read_jsonl(path)}
        if all(i in by_id for i in done_ids):
            return path, by_id
    return None, {}


def run_progress(run: Path, examples: int | None = None) -> list[dict]:
    """The run's ``progress.jsonl`` lines, the first ``examples`` of them if given."""
    progress = read_jsonl(run / "progress.jsonl")
    if not progress:
        raise ValueError(f"{run} has no progress yet")
    if examples is not None and len(progress) < examples:
        raise ValueError(f"{run} has {len(progress)} examples, fewer than --examples {examples}")
    return progress[:examples]


def versus(progress: list[dict], first: list[dict]) -> dict:
    """``progress``'s accuracy minus ``first``'s on the common start of their streams (same problem ids in
    the same order): paired difference with its 95% interval and exact McNemar p (``n`` 0 if none)."""
    m = 0
    while m < min(len(progress), len(first)) and progress[m]["problem_id"] == first[m]["problem_id"]:
        m += 1
    return stats.paired_difference([bool(p["correct"]) for p in progress[:m]],
                                   [bool(p["correct"]) for p in first[:m]])


def run_row(run: Path, runs: list[Path], progress: list[dict]) -> dict:
    """The table's row of ``run`` from its ``progress`` lines (``run_progress``) and its other files."""
    config = run_config(run)
    numbers = progress_numbers(progress)
    n, after = len(progress), numbers["after"]
    online = [bool(p["correct"]) for p in progress]
    ids = [p["problem_id"] for p in progress]
    steps = {role: [s for p in progress for s in p["losses"] if s["role"] == role] for role in ("answer", "stop")}
    answer_steps = steps["answer"]
    written = {p["index"] for p in progress}
    stop_pairs = [q for q in read_jsonl(run / "pairs.jsonl") if q["role"] == "stop" and q["index"] in written]
    cpu = [p["cpu_seconds"] for p in progress if "cpu_seconds" in p]  # from 2026-11-30 on
    cpu_hours = sum(cpu) / 3600 if len(cpu) == n else None
    baseline, untrained = find_baseline(run, config, ids, runs)
    row = {
        "run": str(run), "settings": flat(config["settings"]), "dtype": config.get("runtime", {}).get("dtype"),
        "examples": n, "trained": stats.accuracy(online),
        "baseline": str(baseline) if baseline else None,
        "pairs_per_example": {role: round(numbers["pairs"][role] / n, 3) for role in ("answer", "stop")},
        "dpo_steps": numbers["dpo_steps"],
        "answer_reward_accuracy_unseen": unseen_reward_accuracy(steps["answer"]),
        "stop_reward_accuracy_unseen": unseen_reward_accuracy(steps["stop"]),
        "stop_pairs_yes_chosen": [sum(q["chosen_text"] == "Yes" for q in stop_pairs), len(stop_pairs)],
        "rollouts_other_outcome": [sum(p["rollouts_correct"] if not p["correct"] else
                                       p["n_rollouts"] - p["rollouts_correct"] for p in progress),
                                   sum(p["n_rollouts"] for p in progress)],
        "last_answer_loss": answer_steps[-1]["loss"] if answer_steps else None,
        "seconds_per_example": numbers["seconds_per_example"],
        "cpu_seconds_per_example": round(sum(cpu) / n, 1) if cpu_hours is not None else None,
        "pairs_per_cpu_hour": ({role: round(numbers["pairs"][role] / cpu_hours, 1) for role in ("answer", "stop")}
                               if cpu_hours else None),
        "first_step_after_example": numbers["first_step_after_example"],
        "ended_by_stop": [sum(p["end_reason"] == "stop" for p in progress), n],
        "tokens_per_example": round(sum(p["n_tokens"] for p in progress) / n, 1),
    }
    if baseline:
        flow = [bool(untrained[i]["correct"]) for i in ids]
        changed = [sum(1 for p in part if p["extracted"] != untrained[p["problem_id"]]["extracted"])
                   for part in (progress[:after], progress[after:])]
        row.update({"untrained": stats.accuracy(flow),
                    "trained_minus_untrained": {"all": stats.paired_difference(online, flow),
                                                "after_first_step": stats.paired_difference(online[after:], flow[after:])},
                    # before the first step the adapters are exactly zero: any change there is the numerics of
                    # another batch (bf16 especially), the floor for the changes after it
                    "answers_changed_before_first_step": [changed[0], after],
                    "answers_changed_after_first_step": [changed[1], n - after]})
    return row


def unseen_reward_accuracy(steps: list[dict]) -> dict:
    """Share of pairs with a positive implicit reward margin, measured by each step before it updates, from the
    adapter's second step on (the first starts from zero LoRA weights: margin 0 on every pair): pairs the adapter
    had not trained on, scored by an adapter trained on earlier ones."""
    unseen = steps[1:]
    return stats.proportion(round(sum(s["reward_accuracy"] * s["pairs"] for s in unseen)), sum(s["pairs"] for s in unseen))


def varying(rows: list[dict]) -> list[str]:
    keys = sorted({k for r in rows for k in r["settings"]})
    return [k for k in keys if k not in ("examples",) and len({json.dumps(r["settings"].get(k)) for r in rows}) > 1]


def setting(v) -> str:
    """Small floats (learning rates) as 5e-4, others as they are."""
    if isinstance(v, float) and v and abs(v) < 1e-2:
        mantissa, exponent = f"{v:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def pct(acc: dict) -> str:
    lo, hi = acc["ci95"]
    return f"{acc['correct']}/{acc['n']} ({100 * acc['accuracy']:.0f}% [{100 * lo:.0f}-{100 * hi:.0f}])"


def points(d: dict, n: bool = False) -> str:
    """A paired difference as "+1.2 (-0.4 to +2.8; 5 vs 2; p=0.45)", with ", n=40" if ``n``."""
    return (f"{100 * d['difference']:+.1f} ({100 * d['ci95'][0]:+.1f} to {100 * d['ci95'][1]:+.1f}; "
            f"{d['only_a']} vs {d['only_b']}; p={d['p_value']:.2g}" + (f", n={d['n']})" if n else ")"))


def table(rows: list[dict]) -> str:
    keys = varying(rows)
    head = ["run", *[k.split(".")[-1] for k in keys], "dtype", "trained flow (progressive)", "untrained flow",
            "trained - untrained, points (95% CI; discordant; p)",
            "answers changed vs untrained: before 1st step (zero adapters) / after",
            "Answer / Stop pairs per example", "Stop pairs with Yes chosen", "rollouts with another outcome",
            "DPO steps (Answer, Stop)", "Answer reward acc. on unseen pairs", "Stop reward acc. on unseen pairs",
            "last Answer loss", "s/example", "CPU s/example", "Answer / Stop pairs per CPU-hour",
            "flows ended by the Stop LLM", "answer tokens per example",
            f"minus {Path(rows[0]['run']).name}, points (95% CI; discordant; p)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d = r.get("trained_minus_untrained", {}).get("all")
        diff = points(d) if d else "no matching baseline"
        changed = ("{}/{} / {}/{}".format(*r["answers_changed_before_first_step"], *r["answers_changed_after_first_step"])
                   if d else "-")
        ra, rs = r["answer_reward_accuracy_unseen"], r.get("stop_reward_accuracy_unseen", {"n": 0})
        cph = r.get("pairs_per_cpu_hour")
        cells = [Path(r["run"]).name, *[setting(r["settings"].get(k)) for k in keys],
                 str(r["dtype"] or "not recorded").removeprefix("torch."), pct(r["trained"]), pct(r["untrained"]) if d else "-", diff,
                 changed, f"{r['pairs_per_example']['answer']} / {r['pairs_per_example']['stop']}",
                 "{}/{}".format(*r["stop_pairs_yes_chosen"]), "{}/{}".format(*r["rollouts_other_outcome"]),
                 f"{r['dpo_steps']['answer']}, {r['dpo_steps']['stop']}", pct(ra) if ra["n"] else "-",
                 pct(rs) if rs["n"] else "-",
                 f"{r['last_answer_loss']:.3f}" if r["last_answer_loss"] is not None else "-",
                 str(r["seconds_per_example"]), str(r.get("cpu_seconds_per_example") or "-"),
                 f"{cph['answer']} / {cph['stop']}" if cph else "-",
                 "{}/{}".format(*r["ended_by_stop"]), str(r["tokens_per_example"]),
                 points(r["minus_first_run"], n=True) if "minus_first_run" in r else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m flowcore sweep", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="train run directories, in the order of the table")
    p.add_argument("--out", required=True, help="directory for sweep.json and sweep.md")
    p.add_argument("--examples", type=int, default=None,
                   help="compare every run on its first N examples only (default: all of each run's)")
    args = p.parse_args(argv)
    if args.examples is not None and args.examples < 1:
        p.error("--examples must be at least 1")
    runs = [Path(r) for r in args.runs]
    try:
        progress = [run_progress(run, args.examples) for run in runs]
        rows = [run_row(run, runs, lines) for run, lines in zip(runs, progress)]
        for lines, row in zip(progress[1:], rows[1:]):
            row["minus_first_run"] = {"run": str(runs[0]), **versus(lines, progress[0])}
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    write_json_atomic(out / "sweep.json", {**provenance({"runs": [str(r) for r in runs]}, cli_command("sweep", argv)),
                                           "rows": rows})
    (out / "sweep.md").write_text(text)
    print(text, end="")
    print(f"wrote {out / 'sweep.json'} and {out / 'sweep.md'}")
    return 0
