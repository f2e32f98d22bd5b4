#!/usr/bin/env bash
# DeepSeek-V3's auxiliary-loss-free balancing at small scale: deepseek-tiny (shared expert + 32 experts of
# width 64, 4 active) routed by softmax_topk with the Switch aux loss 0.01 (the preset), against
# sigmoid_bias with no auxiliary loss and the bias update γ = 1e-3. Prints a markdown table.
#   bash experiments/deepseek_v3_balance.sh       (STEPS=600 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/lib.sh
train_variant runs/deepseek-tiny configs/deepseek-tiny.toml
train_variant runs/deepseek-v3/sigmoid_bias configs/deepseek-tiny.toml model.router=sigmoid_bias \
  model.router_aux_loss_coef=0 model.bias_update_speed=0.001
"$MOE" compare runs/deepseek-tiny runs/deepseek-v3/sigmoid_bias
