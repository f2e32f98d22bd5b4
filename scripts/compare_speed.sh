#!/usr/bin/env bash
# Speed before and after a change: runs two builds of `moe` alternately on the same machine, so that
# both see the same load, and prints the median of each measurement for each build:
#   - `moe bench moe-layer` (forward+backward of the MoE layer, T=4096 d=512 E=8 k=2) at G=1 and G=8;
#   - the main job's training throughput (`moe train`, the default model, STEPS steps): tokens/s of
#     the median step, as `moe train` prints it.
# For refactors that must not change speed (with scripts/check_identical.sh for the numbers).
#
#   bash scripts/compare_speed.sh OLD_MOE [NEW_MOE [ROUNDS [STEPS]]]   (NEW_MOE: build/bin/moe; 3 rounds; 150 steps)
#
# LAYER_ARGS adds options to `bench moe-layer` (e.g. "--precision bf16 --reps 9"); STEPS=0 skips the
# training runs. The layer's phases are printed as medians too.
#
# An OLD_MOE of another revision: `git worktree add /tmp/old REV && cmake -S /tmp/old -B /tmp/old/build
# -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_BENCH=OFF && cmake --build /tmp/old/build --target moe`.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: compare_speed.sh OLD_MOE [NEW_MOE [ROUNDS [STEPS]]]}
NEW=${2:-build/bin/moe}
ROUNDS=${3:-3}
STEPS=${4:-150}
WORK=${WORK:-/tmp/moe-speed}
rm -rf "$WORK" && mkdir -p "$WORK"
"$NEW" data --corpus kjv --out "$WORK/data" > /dev/null

for round in $(seq "$ROUNDS"); do
  for which in old new; do
    moe=$OLD; [ "$which" = new ] && moe=$NEW
    for g in 1 8; do
      # shellcheck disable=SC2086  # LAYER_ARGS is a list of options
      "$moe" bench moe-layer --granularity "$g" --threads 2 ${LAYER_ARGS:-} --json >> "$WORK/layer-$which-g$g.jsonl"
    done
    [ "$STEPS" = 0 ] && continue
    "$moe" train --threads 2 --set train.steps="$STEPS" --set train.eval_every=0 --set train.data_dir="$WORK/data" \
        --set train.out="$WORK/run-$which-$round" > "$WORK/train-$which-$round.log" 2>&1
    grep -o 'throughput [0-9]* tokens/s' "$WORK/train-$which-$round.log" | awk '{print $2}' >> "$WORK/train-$which.txt"
    rm -rf "$WORK/run-$which-$round"
  done
  echo "compare_speed: round $round of $ROUNDS done"
done

/usr/bin/python3 - "$WORK" "$STEPS" <<'EOF'
import json, statistics, sys
work = sys.argv[1]
def layer(which, g):
    rows = [json.loads(l) for l in open(f"{work}/layer-{which}-g{g}.jsonl")]
    return statistics.median(r["ms"] for r in rows), statistics.median(r["efficiency"] for r in rows), [round(r["ms"], 1) for r in rows]
def phases(which, g):
    rows = [json.loads(l) for l in open(f"{work}/layer-{which}-g{g}.jsonl")]
    return {k: round(statistics.median(r["phases_ms"][k] for r in rows), 2) for k in rows[0]["phases_ms"]}
def train(which):
    v = [float(x) for x in open(f"{work}/train-{which}.txt")]
    return statistics.median(v), v
for g in (1, 8):
    (mo, eo, ro), (mn, en, rn) = layer("old", g), layer("new", g)
    print(f"moe-layer G={g}: old {mo:.1f} ms (efficiency {eo:.2f}, runs {ro})  new {mn:.1f} ms (efficiency {en:.2f}, runs {rn})  new/old {mn / mo:.3f}")
    po, pn = phases("old", g), phases("new", g)
    print("  phases (ms, old → new): " + ", ".join(f"{k} {po[k]} → {pn[k]}" for k in po if po[k] > 0.01 or pn[k] > 0.01))
if sys.argv[2] == "0":
    sys.exit(0)
(to, ro), (tn, rn) = train("old"), train("new")
print(f"main job: old {to:.0f} tokens/s (runs {ro})  new {tn:.0f} tokens/s (runs {rn})  new/old {tn / to:.3f}")
EOF
