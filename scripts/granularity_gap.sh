#!/usr/bin/env bash
# The cost of fine granularity at equal active parameters: `moe bench moe-layer` at G=1 and G=8
# (T=4096 d=512 h=1024 E=8 k=2; G=8 is 64 experts of width 128, 16 active), run alternately so that
# both see the same load. Prints each G's median time, the ratio of the medians and of each pair, and
# router + dispatch + combine as a share of the layer at each G.
#
#   bash scripts/granularity_gap.sh [ROUNDS [PRECISION [MOE]]]   (5 rounds; bf16; build/bin/moe)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
PRECISION=${2:-bf16}
MOE=${3:-build/bin/moe}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for round in $(seq "$ROUNDS"); do
  for g in 1 8; do
    "$MOE" bench moe-layer --precision "$PRECISION" --granularity "$g" --threads 2 --reps 9 --json >> "$WORK/g$g.jsonl"
  done
  echo "granularity_gap: round $round of $ROUNDS done" >&2
done
/usr/bin/python3 - "$WORK" "$PRECISION" <<'PY'
import json, statistics, sys
work, precision = sys.argv[1], sys.argv[2]
rows = {g: [json.loads(l) for l in open(f"{work}/g{g}.jsonl")] for g in (1, 8)}
med = {g: statistics.median(r["ms"] for r in rows[g]) for g in (1, 8)}
for g in (1, 8):
    print(f"{precision} G={g}: {med[g]:.1f} ms (runs {[round(r['ms'], 1) for r in rows[g]]}), "
          f"router+dispatch+combine {[round(100 * r['overhead_fraction'], 1) for r in rows[g]]} %")
pairs = [round(b["ms"] / a["ms"], 3) for a, b in zip(rows[1], rows[8])]
print(f"G=8 / G=1: {med[8] / med[1]:.3f} (medians), pairs {pairs}")
PY
