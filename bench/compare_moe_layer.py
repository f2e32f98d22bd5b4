#!/usr/bin/python3
"""Runs the moe.cpp MoE layer and its PyTorch peer (bench/peers/torch_moe.py, the Hugging Face
MixtralSparseMoeBlock way) on the same shape and thread count, and prints both and the speed ratio.

  /usr/bin/python3 bench/compare_moe_layer.py [--tokens 4096 --d-model 512 --d-ff 1024 --experts 8
                                               --top-k 2 --granularity 1 --threads 2 --precision fp32]
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_env(threads):
    """The environment both sides run in: OMP_NUM_THREADS, and OpenBLAS's kernels chosen the way moe chooses
    them (src/core/gemm.cpp: SkylakeX, or Cooperlake with avx512_bf16, on AVX-512 CPUs), so that a PyTorch
    peer linked to the same OpenBLAS does not run the generic kernels where OpenBLAS does not know the CPU."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    if "OPENBLAS_CORETYPE" not in env and "avx512f" in flags:
        env["OPENBLAS_CORETYPE"] = "COOPERLAKE" if "avx512_bf16" in flags else "SKYLAKEX"
    return env


def run_json(cmd, env):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--d-ff", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--granularity", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--peer-precision", default="fp32", choices=["fp32", "bf16"],
                    help="arithmetic of the PyTorch peer (bf16: CPU autocast)")
    ap.add_argument("--moe", default=os.path.join(ROOT, "build", "bin", "moe"))
    a = ap.parse_args()
    shape = ["--tokens", str(a.tokens), "--d-model", str(a.d_model), "--d-ff", str(a.d_ff),
             "--experts", str(a.experts), "--top-k", str(a.top_k), "--granularity", str(a.granularity),
             "--threads", str(a.threads)]
    env = bench_env(a.threads)
    ours = run_json([a.moe, "bench", "moe-layer", *shape, "--precision", a.precision, "--json"], env)
    peer = run_json([sys.executable, os.path.join(ROOT, "bench", "peers", "torch_moe.py"), *shape,
                     "--precision", a.peer_precision], env)
    print(f"shape: T={a.tokens} d={a.d_model} d_ff={a.d_ff} E={a.experts} k={a.top_k} G={a.granularity}, "
          f"{a.threads} threads")
    print(f"moe.cpp ({a.precision}): {ours['ms']:.1f} ms  {ours['gflops']:.1f} GFLOP/s  "
          f"efficiency {ours['efficiency']:.2f} of the {ours['peak_gflops']:.1f} GFLOP/s {ours['peak_precision']} peak "
          f"({ours['peak_kernel']})  "
          f"(router+dispatch+combine {100 * ours['overhead_fraction']:.1f}% of the time)")
    print(f"PyTorch {peer['torch']} peer (HF MixtralSparseMoeBlock loop, {a.peer_precision}): {peer['ms']:.1f} ms  "
          f"{peer['gflops']:.1f} GFLOP/s")
    ratio = peer["ms"] / ours["ms"]
    print(f"speed-up over the peer: {ratio:.2f}x")
    print(json.dumps({"moe": ours, "peer": peer, "speedup": ratio}))


if __name__ == "__main__":
    main()
