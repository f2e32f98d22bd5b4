#!/usr/bin/env bash
# Kill loop: trains a small model with a checkpoint every step, kills it with SIGKILL at random
# moments (50 times by default), and resumes it each time. After every kill the newest complete
# checkpoint must load, and its weights and optimizer state must be byte-identical to those an
# uninterrupted run wrote at the same step; at the end the resumed run must finish exactly where the
# uninterrupted one did. Prints one line per kill and a summary; exits non-zero on any mismatch.
#
#   bash scripts/kill_loop.sh [KILLS] [WORKDIR]      (after scripts/setup.sh; needs bible-kjv)
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-50}
WORK=${2:-/tmp/moe-kill-loop}
MOE=${MOE:-build/bin/moe}
STEPS=${STEPS:-6000}
[ -x "$MOE" ] || { echo "kill_loop: $MOE not found; run scripts/setup.sh first" >&2; exit 1; }

ARGS=(--set model.vocab_size=400 --set model.hidden_size=16 --set model.num_hidden_layers=2
      --set model.num_attention_heads=2 --set model.intermediate_size=32 --set model.moe_intermediate_size=16
      --set model.num_local_experts=4 --set model.max_position_embeddings=16 --set train.batch_size=4
      --set train.eval_every=0 --set train.eval_windows=4 --set train.save_every=1
      --set train.steps="$STEPS" --set train.data_dir="$WORK/data" --threads 1)

rm -rf "$WORK" && mkdir -p "$WORK"
echo "kill_loop: reference run of $STEPS steps, a checkpoint each step"
"$MOE" train "${ARGS[@]}" --set train.out="$WORK/ref" --set train.keep_checkpoints=0 > "$WORK/ref.log"
# The fingerprint of each reference checkpoint, then the reference itself goes (hundreds of MB).
for d in "$WORK"/ref/step-*; do
  echo "$(basename "$d") $(cat "$d/model.safetensors" "$d/optimizer.safetensors" | sha256sum | cut -d' ' -f1)"
done > "$WORK/ref.sums"
final_ref=$(tail -n 1 "$WORK/ref.sums")
rm -rf "$WORK/ref"

newest() { ls -d "$WORK"/run/step-[0-9]* 2>/dev/null | grep -v '\.' | sort | tail -n 1; }
check() {  # the newest complete checkpoint equals the reference's at its step
  local d sum want
  d=$(newest)
  [ -n "$d" ] || { echo "none"; return 0; }
  sum=$(cat "$d/model.safetensors" "$d/optimizer.safetensors" | sha256sum | cut -d' ' -f1)
  want=$(grep "^$(basename "$d") " "$WORK/ref.sums" | cut -d' ' -f2)
  if [ "$sum" != "$want" ]; then echo "MISMATCH at $(basename "$d")"; return 1; fi
  basename "$d"
}

resumes=0; mid_write=0
for i in $(seq 1 "$KILLS"); do
  flag=(); [ -d "$WORK/run" ] && flag=(--resume)
  "$MOE" train "${ARGS[@]}" --set train.out="$WORK/run" "${flag[@]}" > "$WORK/run.log" 2>&1 &
  pid=$!
  sleep "$(awk -v s="$RANDOM" 'BEGIN { srand(s); printf "%.2f", 0.3 + 1.2 * rand() }')"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ ${#flag[@]} -gt 0 ] && resumes=$((resumes + 1))
  ls -d "$WORK"/run/*.tmp.* > /dev/null 2>&1 && mid_write=$((mid_write + 1))
  if ! at=$(check); then echo "kill $i: $at"; exit 1; fi
  echo "kill $i: newest complete checkpoint $at matches the uninterrupted run"
  if grep -q "checkpoint and metrics.jsonl" "$WORK/run.log"; then echo "kill_loop: the run finished before kill $i; raise STEPS" >&2; exit 1; fi
done

echo "kill_loop: resuming to the end"
"$MOE" train "${ARGS[@]}" --set train.out="$WORK/run" --resume > "$WORK/run.log" 2>&1
at=$(check)
if [ "$at $(grep "^$at " "$WORK/ref.sums" | cut -d' ' -f2)" != "$final_ref" ]; then
  echo "kill_loop: FAILED: the resumed run ended at $at, not as the uninterrupted run ($final_ref)"; exit 1
fi
echo "kill_loop: $KILLS kills ($mid_write while a checkpoint was being written), $resumes resumes, every newest checkpoint byte-identical to the uninterrupted run's, and the final one too ($at)"
