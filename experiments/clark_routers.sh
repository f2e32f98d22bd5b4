#!/usr/bin/env bash
# The router comparison of Clark et al. 2022 at small scale and equal active parameters (4.73M; the
# routed FFN is 2 × 256 or 1 × 512 wide), with the dense model for reference. Two markdown tables:
#   top-2 of 8 experts of width 256: topk_softmax (Mixtral), sbase, hash, and reinforce at k = 2;
#   top-1 of 8 experts of width 512, Clark's setting: softmax_topk (Switch gate), sbase, reinforce,
#   hash and base.
#   bash experiments/clark_routers.sh             (STEPS=600 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/lib.sh
train_variant runs/dense-tiny configs/dense-tiny.toml
for r in topk_softmax sbase hash; do
  train_variant "runs/routers/$r" "configs/routers/$r.toml"
done
train_variant runs/routers/reinforce-top2 configs/routers/reinforce.toml model.num_experts_per_tok=2 model.moe_intermediate_size=256
train_variant runs/routers/reinforce configs/routers/reinforce.toml
train_variant runs/routers/base configs/routers/base.toml
top1=(model.num_experts_per_tok=1 model.moe_intermediate_size=512)
train_variant runs/routers-top1/softmax_topk configs/routers/softmax_topk.toml "${top1[@]}" model.norm_topk_prob=false
for r in sbase hash; do
  train_variant "runs/routers-top1/$r" "configs/routers/$r.toml" "${top1[@]}"
done
echo "### top-2 of 8 experts of width 256"
"$MOE" compare runs/dense-tiny runs/routers/topk_softmax runs/routers/sbase runs/routers/hash runs/routers/reinforce-top2
echo "### top-1 of 8 experts of width 512"
"$MOE" compare runs/dense-tiny runs/routers-top1/softmax_topk runs/routers-top1/sbase runs/routers/reinforce \
  runs/routers-top1/hash runs/routers/base
