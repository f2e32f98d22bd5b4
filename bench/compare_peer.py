#!/usr/bin/python3
"""Runs `moe bench peer` and its PyTorch peer (bench/peers/torch_peer.py) on the same shape and
thread count, for each N = n_keys², and prints a markdown table: forward+backward ms of both, the
speed ratio, moe.cpp's share of time in retrieval, and the time per token relative to the smallest N.

  /usr/bin/python3 bench/compare_peer.py [--n-keys 128 256 512 1024 --heads 8 --top-k 16
                                          --d-model 256 --d-key 128 --tokens 4096 --threads 2]
"""
import argparse
import os

from compare_moe_layer import ROOT, bench_env, run_json


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-keys", type=int, nargs="+", default=[128, 256, 512, 1024])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--d-key", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true", help="moe.cpp only")
    a = ap.parse_args()
    env = bench_env(a.threads)
    shape = ["--heads", str(a.heads), "--top-k", str(a.top_k), "--d-model", str(a.d_model), "--d-key", str(a.d_key),
             "--tokens", str(a.tokens), "--reps", str(a.reps)]
    print("| N | moe.cpp ms | us/token | × smallest N | retrieval share | PyTorch ms | PyTorch / moe.cpp |")
    print("|---|---|---|---|---|---|---|")
    first = None
    for n in a.n_keys:
        ours = run_json([os.path.join(ROOT, "build/bin/moe"), "bench", "peer", "--n-keys", str(n), "--threads",
                         str(a.threads), "--json"] + shape, env)
        first = first or ours["ms"]
        torch_ms = float("nan")
        if not a.no_torch:
            torch_ms = run_json(["/usr/bin/python3", os.path.join(ROOT, "bench/peers/torch_peer.py"), "--n-keys", str(n),
                                 "--threads", str(a.threads)] + shape, env)["ms"]
        print("| %d² | %.1f | %.1f | %.2f | %.0f%% | %.1f | %.2f |" % (
            n, ours["ms"], ours["us_per_token"], ours["ms"] / first, 100 * ours["retrieval_share"], torch_ms,
            torch_ms / ours["ms"]), flush=True)


if __name__ == "__main__":
    main()
