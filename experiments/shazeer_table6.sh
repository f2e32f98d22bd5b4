#!/usr/bin/env bash
# Shazeer et al. 2017, Table 6, at small scale: noisy top-2-of-8 gating (W_r = W_n = 0 at init) with the
# importance and load losses at w = 0 and at w = 0.1, no other balance loss. Prints a markdown table:
# validation loss, the training-time CV of importance and load and max/mean load, and the same at eval.
#   bash experiments/shazeer_table6.sh            (STEPS=600 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/lib.sh
for w in 0 0.1; do
  train_variant "runs/shazeer/w$w" configs/routers/noisy_topk.toml "model.noisy_loss_coef=$w"
done
"$MOE" compare runs/shazeer/w0 runs/shazeer/w0.1
