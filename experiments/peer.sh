#!/usr/bin/env bash
# PEER at small scale on the KJV Bible (He 2024, Table 1, Fig. 3a and Table 2):
#   equal FLOPs per token: dense-tiny, the middle block's FFN as top-2-of-8 MoE (moe-middle) and as a
#   PEER layer of 1024² experts (peer-tiny);
#   PEER with N = 128², 256², 512², 1024² experts (h = 8, k = 16, d_key = 64: the same active
#   parameters; only the sub-key scoring grows with √N);
#   query BatchNorm on and off, with expert usage and unevenness on held-out text.
#   bash experiments/peer.sh            (STEPS=600 by default; WINDOWS=256 validation windows)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/lib.sh
WINDOWS=${WINDOWS:-256}
train_variant runs/dense-tiny configs/dense-tiny.toml
train_variant runs/peer/peer-1024 configs/peer/peer-tiny.toml
train_variant runs/peer/moe-middle configs/peer/moe-middle.toml
for n in 128 256 512; do
  train_variant "runs/peer/peer-$n" configs/peer/peer-tiny.toml "model.peer.n_keys=$n"
done
train_variant runs/peer/peer-1024-nobn configs/peer/peer-tiny.toml model.peer.query_bn=false
train_variant runs/peer/peer-128-nobn configs/peer/peer-tiny.toml model.peer.n_keys=128 model.peer.query_bn=false

echo "| run | experts | MFLOP/token | val loss ($WINDOWS windows) | tokens/s |"
echo "|---|---|---|---|---|"
for r in runs/dense-tiny runs/peer/moe-middle runs/peer/peer-128 runs/peer/peer-256 runs/peer/peer-512 runs/peer/peer-1024; do
  loss=$(eval_loss "$r")
  tps=$(python3 -c "import json,statistics as s;print(round(s.median(json.loads(l)['tokens_per_s'] for l in open('$r/metrics.jsonl'))))")
  experts=$(python3 -c "import json;m=json.load(open('$r/config.json'))['model'];f=m['ffn'];print('%d²' % m['peer.n_keys'] if f == 'peer' else '%d' % m['num_local_experts'] if f == 'moe' else 'dense')")
  echo "| $r | $experts | $(mflops "$r") | $loss | $tps |"
done
echo
echo "| run | query BN | val loss | usage | unevenness | gate share of the top 1% / 10% |"
echo "|---|---|---|---|---|---|"
plots=()
for r in runs/peer/peer-128 runs/peer/peer-128-nobn runs/peer/peer-256 runs/peer/peer-512 runs/peer/peer-1024 runs/peer/peer-1024-nobn; do
  "$MOE" inspect --routing --ckpt "$r" --windows "$WINDOWS" --json > "$r/peer-usage.json"
  python3 -c "import json;j=json.load(open('$r/peer-usage.json'));l=j['layers'][0];print('| $r | %s | %.4f | %.1f%% | %.3f | %.0f%% / %.0f%% |'%(l['query_bn'],j['val_loss'],100*l['usage'],l['unevenness'],100*l['top_1%'],100*l['top_10%']))"
  plots+=("$r/peer-usage.json:$(basename "$r")")
done
/usr/bin/python3 bench/plot_peer_usage.py "${plots[@]}" --out docs/img/peer-usage.svg
/usr/bin/python3 bench/plot_runs.py runs/dense-tiny runs/peer/moe-middle runs/peer/peer-128 runs/peer/peer-256 \
  runs/peer/peer-512 runs/peer/peer-1024 --out docs/img/peer-600.svg --ymax 4.6 \
  --title "PEER, MoE and dense at equal FLOPs on the KJV Bible (validation: thick)"
