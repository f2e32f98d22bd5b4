#!/usr/bin/env bash
# PEER with 128² and 1024² experts trained twice as long (1200 steps, 2.46M tokens), beside the
# 1200-step dense-tiny: does the larger expert count catch up once its experts have seen more tokens?
#   bash experiments/peer_long.sh      (WINDOWS=256)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=1200
source experiments/lib.sh
WINDOWS=${WINDOWS:-256}
train_variant runs/dense-tiny-1200 configs/dense-tiny.toml
train_variant runs/peer/1200/peer-128 configs/peer/peer-tiny.toml model.peer.n_keys=128
train_variant runs/peer/1200/peer-1024 configs/peer/peer-tiny.toml
echo "| run (1200 steps) | val loss ($WINDOWS windows) |"
echo "|---|---|"
for r in runs/dense-tiny-1200 runs/peer/1200/peer-128 runs/peer/1200/peer-1024; do
  echo "| $r | $(eval_loss "$r") |"
done
