#!/usr/bin/python3
"""Runs moe.cpp's causal self-attention block (`moe bench attention`) and its PyTorch peer
(bench/peers/torch_attention.py) on the same shape and thread count, alternately, and prints both,
the whole block's and the core's (scores, softmax, product with the values) speed ratios.

  /usr/bin/python3 bench/compare_attention.py [--batch 16 --seq-len 128 --d-model 256 --heads 4
                                               --threads 2 --peer-threads 0 --precision fp32 --rounds 3]
"""
import argparse
import json
import os
import statistics
import sys

from compare_moe_layer import ROOT, bench_env, run_json


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-threads", type=int, default=0,
                    help="the peer's threads (0: --threads); Debian's PyTorch 1.13 can run fp32 slower on 2 than on 1")
    ap.add_argument("--rounds", type=int, default=3, help="alternate runs of each; medians reported")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="moe.cpp's projections, and the peer under CPU autocast for bf16")
    ap.add_argument("--moe", default=os.path.join(ROOT, "build", "bin", "moe"))
    a = ap.parse_args()
    shape = ["--batch", str(a.batch), "--seq-len", str(a.seq_len), "--d-model", str(a.d_model),
             "--heads", str(a.heads), "--kv-heads", str(a.kv_heads), "--precision", a.precision]
    pt = a.peer_threads or a.threads
    env = bench_env(a.threads)
    peer_env = bench_env(pt)
    ours, peer = [], []
    for _ in range(a.rounds):
        ours.append(run_json([a.moe, "bench", "attention", *shape, "--threads", str(a.threads), "--json"], env))
        peer.append(run_json([sys.executable, os.path.join(ROOT, "bench", "peers", "torch_attention.py"), *shape,
                              "--threads", str(pt)], peer_env))
    med = lambda runs, key: statistics.median(r[key] for r in runs)
    ms, core = med(ours, "ms"), med(ours, "core_fwd_ms") + med(ours, "core_bwd_ms")
    pms, pcore = med(peer, "ms"), med(peer, "core_ms")
    o = ours[-1]
    print(f"shape: B={a.batch} L={a.seq_len} d={a.d_model} heads {a.heads} (kv {o['kv_heads']}) of width {o['head_dim']}, "
          f"{a.threads} threads, {a.precision}, medians of {a.rounds} alternate runs")
    print(f"moe.cpp: block {ms:.2f} ms, core {core:.2f} ms ({med(ours, 'core_gflops'):.1f} GFLOP/s, "
          f"{med(ours, 'core_efficiency'):.2f} of the fp32 peak {med(ours, 'peak_gflops'):.1f}, {o['peak_kernel']})")
    print(f"PyTorch {peer[-1]['torch']} ({pt} threads): block {pms:.2f} ms, core {pcore:.2f} ms")
    print(f"speed-up over the peer: block {pms / ms:.2f}x, core {pcore / core:.2f}x")
    print(json.dumps({"moe": ours, "peer": peer, "block_speedup": pms / ms, "core_speedup": pcore / core}))


if __name__ == "__main__":
    main()
