# lib.sh — shared by the experiment scripts: train a variant unless a finished run is already there
# (its checkpoint at step $STEPS); an unfinished one is trained again from the start (--overwrite).
# Usage: train_variant OUT CONFIG [section.key=value ...]   (steps: $STEPS, default 600)
STEPS=${STEPS:-600}
MOE=${MOE:-build/bin/moe}

train_variant() {
  local out=$1 cfg=$2
  shift 2
  if [ -f "$out/step-$(printf %08d "$STEPS")/manifest.json" ]; then
    echo "== $out: finished run found, not trained again"
    return
  fi
  local sets=(--set "train.out=$out" --set "train.steps=$STEPS")
  local s
  for s in "$@"; do sets+=(--set "$s"); done
  echo "== $out: $MOE train --config $cfg ${sets[*]}"
  "$MOE" train --config "$cfg" "${sets[@]}" --overwrite | grep -E "^(train:|validation|throughput|expert load)"
}

# The validation loss of a run over $WINDOWS windows (4 decimals), from `moe eval --json`.
eval_loss() {
  "$MOE" eval --ckpt "$1" --windows "$WINDOWS" --json | python3 -c 'import json, sys; print("%.4f" % json.load(sys.stdin)["val_loss"])'
}

# Training MFLOP per token of a run, from `moe inspect --json`.
mflops() {
  "$MOE" inspect --ckpt "$1" --json | python3 -c 'import json, sys; print("%.2f" % (json.load(sys.stdin)["flops_per_token"] / 1e6))'
}
