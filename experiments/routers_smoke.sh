#!/usr/bin/env bash
# Every router of docs/MECHANISMS.md §2 (or the ones named) trains its preset configs/routers/NAME.toml for 200
# steps; prints the final validation loss and fails if any loss or gradient norm is not finite.
#   bash experiments/routers_smoke.sh [ROUTER...]
set -euo pipefail
cd "$(dirname "$0")/.."
MOE=${MOE:-build/bin/moe}
if [ $# -eq 0 ]; then set -- $(ls configs/routers/ | sed 's/\.toml$//'); fi
for r in "$@"; do
  out=runs/smoke/$r
  "$MOE" train --config "configs/routers/$r.toml" --set train.steps=200 --set "train.out=$out" --overwrite | grep -E "^validation" | sed "s/^/$r: /"
  if grep -qiE '"(loss|grad_norm)":(nan|null|-?inf)' "$out/metrics.jsonl"; then echo "$r: NaN in $out/metrics.jsonl"; exit 1; fi
done
echo "every router trained 200 steps with finite losses and gradients"
