#!/usr/bin/python3
"""Trains a moe.cpp preset and its PyTorch peer (bench/peers/torch_lm.py) for the same number of steps
of the same batch shape on the same thread count, and prints both throughputs, the ratio, and
moe.cpp's MFU against the GEMM peak of its precision measured in the same run (`moe bench gemm`,
before and after the training; the better best of the two).

  /usr/bin/python3 bench/compare_train.py --config configs/mixtral-tiny.toml --steps 30 --threads 2 \
      [--precision bf16] [--peer-precision bf16]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

from compare_moe_layer import ROOT, bench_env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "mixtral-tiny.toml"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--moe", default=os.path.join(ROOT, "build", "bin", "moe"))
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="moe.cpp's model.precision")
    ap.add_argument("--peer-precision", choices=["fp32", "bf16"], default="fp32",
                    help="the peer's: bf16 runs its forward under torch.autocast")
    a = ap.parse_args()
    env = bench_env(a.threads)

    def peak():
        r = subprocess.run([a.moe, "bench", "gemm", "--threads", str(a.threads), "--json"], check=True,
                           capture_output=True, text=True, env=env, cwd=ROOT)
        return json.loads(r.stdout.strip().splitlines()[-1])[a.precision]

    before = peak()
    with tempfile.TemporaryDirectory() as out:
        log = subprocess.run([a.moe, "train", "--config", a.config, "--threads", str(a.threads),
                              "--set", f"train.steps={a.steps}", "--set", f"train.out={out}/run",
                              "--set", f"model.precision={a.precision}",
                              "--set", "train.eval_every=0", "--set", "train.eval_windows=1"],
                             check=True, env=env, capture_output=True, text=True, cwd=ROOT).stdout
        with open(f"{out}/run/metrics.jsonl") as f:
            rates = [json.loads(line)["tokens_per_s"] for line in f]
    after = peak()
    ours = statistics.median(rates[3:] if len(rates) > 6 else rates)
    mflop = float(re.search(r"([0-9.]+) MFLOP/token", log).group(1))  # training FLOPs per token
    best = max(before["best_gflops"], after["best_gflops"])
    mfu = ours * mflop * 1e6 / (best * 1e9)
    peer = json.loads(subprocess.run([sys.executable, os.path.join(ROOT, "bench", "peers", "torch_lm.py"),
                                      "--config", a.config, "--steps", str(a.steps), "--threads", str(a.threads),
                                      "--precision", a.peer_precision],
                                     check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1])
    print(f"{os.path.basename(a.config)}: moe.cpp ({a.precision}) {ours:.0f} tokens/s, PyTorch {peer['torch']} peer "
          f"({a.peer_precision}) {peer['tokens_per_s']:.0f} tokens/s, ratio {ours / peer['tokens_per_s']:.2f}x "
          f"({a.threads} threads, {a.steps} steps); MFU {mfu:.3f} of the {a.precision} GEMM peak {best:.1f} GFLOP/s "
          f"({before['kernel']}; best of {before['best_gflops']:.1f} before and {after['best_gflops']:.1f} after)")
    print(json.dumps({"moe_tokens_per_s": ours, "precision": a.precision, "mflop_per_token": mflop, "peer": peer,
                      "ratio": ours / peer["tokens_per_s"], "peak": {"before": before, "after": after, "best": best},
                      "mfu": mfu}))


if __name__ == "__main__":
    main()
