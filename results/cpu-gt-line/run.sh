#!/usr/bin/env bash
# Does the ground-truth trace format fix (2026-12-01, flowcore/compile/traces.py) keep the SFT model answering
# in the graded form? An A/B on the cpu preset: the same 40 selected prompts as results/cpu/sft_data, the
# ground-truth traces remade in the current format (the 9 MATH traces gain the line "The final answer is
# \boxed{GOLD}."; the 31 GSM8K ones are unchanged), SFT and evaluation of that one row exactly as
# results/cpu's (same preset settings, fp32, transformers engine), then paired tests against
# results/cpu/eval/ground_truth (the old format) and results/cpu/eval/zero_shot.
# Run from the repository root: bash results/cpu-gt-line/run.sh   (about an hour of one core; resumable)
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=results/cpu-gt-line
"$PY" - "$OUT" <<'PYEOF'
import sys
from pathlib import Path
from flowcore import results
from flowcore.compile import traces
from flowcore.online.train import load_problems

out = Path(sys.argv[1]) / "sft_data"
old = results.read_jsonl("results/cpu/sft_data/ground_truth.jsonl")
pools = {d: {p.id: p for p in load_problems(d, "train", "local", None)} for d in {r["dataset"] for r in old}}
new = [{**r, "completion": traces.ground_truth_text(pools[r["dataset"]][r["problem_id"]])} for r in old]
changed = sum(a["completion"] != b["completion"] for a, b in zip(old, new))
out.mkdir(parents=True, exist_ok=True)
if (out / "ground_truth.jsonl").is_file():
    assert results.read_jsonl(out / "ground_truth.jsonl") == new, f"{out} holds other traces"
else:
    results.write_jsonl_atomic(out / "ground_truth.jsonl", new)
    results.write_json_atomic(out / "made.json", results.provenance(
        {"from": "results/cpu/sft_data/ground_truth.jsonl", "traces": "flowcore.compile.traces.ground_truth_text",
         "changed": changed, "traces_total": len(new)}, "bash results/cpu-gt-line/run.sh"))
print(f"[gt-line] {len(new)} traces, {changed} changed")
PYEOF
"$PY" -m flowcore reproduce --preset cpu --out "$OUT" --stages sft,eval --rows ground_truth --engine hf \
    --dtype float32
"$PY" - "$OUT" <<'PYEOF'
import sys
from pathlib import Path
from flowcore import results, stats
from flowcore.eval import evaluate

out = Path(sys.argv[1])
rows = {"new_format": out / "eval/ground_truth", "old_format": Path("results/cpu/eval/ground_truth"),
        "zero_shot": Path("results/cpu/eval/zero_shot")}
report = {}
for name in ("gsm8k-test-first100", "math-test500-first50"):
    by_id = {k: {r["problem_id"]: r for r in results.read_jsonl(d / f"{name}.jsonl")} for k, d in rows.items()}
    ids = sorted(by_id["old_format"])
    assert all(sorted(v) == ids for v in by_id.values()), f"{name}: the files hold other problems"
    recs = {k: [v[i] for i in ids] for k, v in by_id.items()}  # one problem order (files are in finishing order)
    right = {k: [r["correct"] for r in v] for k, v in recs.items()}
    report[name] = {
        "cells": {k: {**evaluate.cell(v), "ended_turn_without_answer": sum(r["end_reason"] == "eos" and r["extracted"] is None
                                                       for r in v)} for k, v in recs.items()},
        "new_vs_old": stats.paired_difference(right["new_format"], right["old_format"]),
        "new_vs_zero_shot": stats.paired_difference(right["new_format"], right["zero_shot"]),
        "answered_new_vs_old": stats.mcnemar([r["extracted"] is not None for r in recs["new_format"]],
                                             [r["extracted"] is not None for r in recs["old_format"]]),
    }
    c = report[name]["cells"]
    print(f"{name}: " + "; ".join(f"{k} {stats.fmt(v)}, answered {v['answered']}" for k, v in c.items()))
    print(f"  new - old {stats.fmt_difference(report[name]['new_vs_old'])}")
    print(f"  new - zero-shot {stats.fmt_difference(report[name]['new_vs_zero_shot'])}")
results.write_json_atomic(out / "compare.json", {
    **results.provenance({"rows": {k: str(v) for k, v in rows.items()}}, "bash results/cpu-gt-line/run.sh"), **report})
PYEOF
