#!/usr/bin/env bash
# The equal-FLOP comparison of experiments/peer.sh again with other seeds (initialisation and
# batches), to see how much of each gap is seed noise: dense-tiny, moe-middle, PEER with 128² and
# 1024² experts. Seed 1 is experiments/peer.sh's run.
#   bash experiments/peer_seeds.sh      (after experiments/peer.sh; SEEDS="2 3", STEPS=600, WINDOWS=256)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/lib.sh
WINDOWS=${WINDOWS:-256}
SEEDS=${SEEDS:-2 3}
for sd in $SEEDS; do
  seed=("model.seed=$sd" "train.seed=$sd")
  train_variant "runs/peer/seed$sd/dense-tiny" configs/dense-tiny.toml "${seed[@]}"
  train_variant "runs/peer/seed$sd/moe-middle" configs/peer/moe-middle.toml "${seed[@]}"
  train_variant "runs/peer/seed$sd/peer-128" configs/peer/peer-tiny.toml model.peer.n_keys=128 "${seed[@]}"
  train_variant "runs/peer/seed$sd/peer-1024" configs/peer/peer-tiny.toml "${seed[@]}"
done
loss() { eval_loss "$1"; }
header="| run | seed 1"
for s in $SEEDS; do header+=" | seed $s"; done
echo "$header | mean | max − min |"
echo "|---|---$(for s in $SEEDS; do printf -- '|---'; done)|---|---|"
for r in dense-tiny peer/moe-middle peer/peer-128 peer/peer-1024; do
  v=("$(loss "runs/$r")")
  for s in $SEEDS; do v+=("$(loss "runs/peer/seed$s/$(basename "$r")")"); done
  python3 -c "import sys;v=[float(x) for x in sys.argv[2:]];print('| %s | %s | %.4f | %.4f |'%(sys.argv[1],' | '.join('%.4f'%x for x in v),sum(v)/len(v),max(v)-min(v)))" "$(basename "$r")" "${v[@]}"
done
