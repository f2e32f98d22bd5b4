#!/usr/bin/env bash
# The equal-FLOP comparison of experiments/peer.sh again with seed 2 (initialisation and batches), to
# see how much of each gap is seed noise: dense-tiny, moe-middle, PEER with 128² and 1024² experts.
#   bash experiments/peer_seeds.sh      (after experiments/peer.sh; STEPS=600, WINDOWS=256)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/lib.sh
WINDOWS=${WINDOWS:-256}
seed=(model.seed=2 train.seed=2)
train_variant runs/peer/seed2/dense-tiny configs/dense-tiny.toml "${seed[@]}"
train_variant runs/peer/seed2/moe-middle configs/peer/moe-middle.toml "${seed[@]}"
train_variant runs/peer/seed2/peer-128 configs/peer/peer-tiny.toml model.peer.n_keys=128 "${seed[@]}"
train_variant runs/peer/seed2/peer-1024 configs/peer/peer-tiny.toml "${seed[@]}"
echo "| run | seed 1 | seed 2 | mean |"
echo "|---|---|---|---|"
for r in dense-tiny peer/moe-middle peer/peer-128 peer/peer-1024; do
  a=$("$MOE" eval --ckpt "runs/$r" --windows "$WINDOWS" | sed -n 's/.*loss \([0-9.]*\).*/\1/p' | head -1)
  b=$("$MOE" eval --ckpt "runs/peer/seed2/$(basename "$r")" --windows "$WINDOWS" | sed -n 's/.*loss \([0-9.]*\).*/\1/p' | head -1)
  echo "| $(basename "$r") | $a | $b | $(python3 -c "print('%.4f' % (($a + $b) / 2))") |"
done
