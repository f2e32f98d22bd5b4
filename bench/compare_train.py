#!/usr/bin/python3
"""Trains a moe.cpp preset and its PyTorch peer (bench/peers/torch_lm.py) for the same number of steps
of the same batch shape on the same thread count, and prints both throughputs and the ratio.

  /usr/bin/python3 bench/compare_train.py --config configs/mixtral-tiny.toml --steps 30 --threads 2
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "mixtral-tiny.toml"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--moe", default=os.path.join(ROOT, "build", "bin", "moe"))
    a = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([a.moe, "train", "--config", a.config, "--threads", str(a.threads),
                        "--set", f"train.steps={a.steps}", "--set", f"train.out={out}/run",
                        "--set", "train.eval_every=0", "--set", "train.eval_windows=1"],
                       check=True, env=env, stdout=subprocess.DEVNULL, cwd=ROOT)
        with open(f"{out}/run/metrics.jsonl") as f:
            rates = [json.loads(line)["tokens_per_s"] for line in f]
    ours = statistics.median(rates[3:] if len(rates) > 6 else rates)
    peer = json.loads(subprocess.run([sys.executable, os.path.join(ROOT, "bench", "peers", "torch_lm.py"),
                                      "--config", a.config, "--steps", str(a.steps), "--threads", str(a.threads)],
                                     check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1])
    print(f"{os.path.basename(a.config)}: moe.cpp {ours:.0f} tokens/s, PyTorch {peer['torch']} peer "
          f"{peer['tokens_per_s']:.0f} tokens/s, ratio {ours / peer['tokens_per_s']:.2f}x ({a.threads} threads, "
          f"{a.steps} steps)")
    print(json.dumps({"moe_tokens_per_s": ours, "peer": peer, "ratio": ours / peer["tokens_per_s"]}))


if __name__ == "__main__":
    main()
