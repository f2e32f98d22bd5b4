#!/usr/bin/env python3
"""Expert parallelism on one machine, measured, and an estimate for many (docs/PERFORMANCE.md,
docs/DISTRIBUTED.md).

Trains the same run (default: configs/mixtral-tiny.toml, the main job's model) for --steps steps in
one process and with mpirun -np P for each P of --ranks, and prints markdown:

  1. per P: median step time, tokens/s, the share of the step in communication (the slowest rank's),
     the part of it summing the gradients, and the bytes a rank sent per token and MoE layer in one
     pass (forward or backward) against the analytic 2·k·d·4·(P−1)/P: a token's k rows of d floats
     leave for the experts' ranks and as many come back, of which (P−1)/P cross ranks (received: the
     same);
  2. an estimate of the step at 8, 64 and 512 nodes (one rank per node, the same tokens per node, the
     experts spread E/P per node), from the measured compute per token (this machine's, and a node
     100× faster) and a stated network: bandwidth per node and latency per message.

    bench/ep_scaling.py [--moe build/bin/moe] [--config configs/mixtral-tiny.toml] [--steps 30]
                        [--ranks 2 4] [--threads 2]

Threads: P = 1 runs with --threads; each of P ranks with max(1, threads // P) (ranks beyond the cores
share them: the measured communication share then includes waiting for a core).
"""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--mca", "btl_vader_single_copy_mechanism", "none"]


def train(moe, config, steps, P, threads, out, extra):
    cmd = [moe, "train", "--config", config, "--threads", str(threads), "--set", f"train.steps={steps}",
           "--set", f"train.out={out}", "--set", "train.eval_every=0", "--set", f"train.expert_parallel={P}"]
    for s in extra:
        cmd += ["--set", s]
    if P > 1:
        cmd = MPIRUN + ["-np", str(P), "--bind-to", "none"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    cfg = json.load(open(f"{out}/config.json"))
    lines = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    return cfg, lines[3:]  # the first steps warm the caches and the allocator


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moe", default="build/bin/moe")
    ap.add_argument("--config", default="configs/mixtral-tiny.toml")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--set", action="append", default=[], help="more --set overrides for every run")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ep_scaling.")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"CPU: {cpu}, {os.cpu_count()} cores; {a.config}, {a.steps} steps (medians over steps 4–{a.steps})\n")
    rows, base = [], None
    for P in [1] + a.ranks:
        cfg, m = train(a.moe, a.config, a.steps, P, max(1, a.threads // P) if P > 1 else a.threads, f"{tmp}/p{P}", a.set)
        mc, tc = cfg["model"], cfg["train"]
        d, k = mc["hidden_size"], mc["num_experts_per_tok"]
        layers = sum(1 for _ in m[0]["moe"])
        tokens = tc["batch_size"] * mc["max_position_embeddings"]
        step = statistics.median(x["step_s"] for x in m)
        row = {"P": P, "step_s": step, "tok_s": statistics.median(x["tokens_per_s"] for x in m), "layers": layers, "d": d,
               "k": k, "tokens": tokens}
        if P > 1:
            dist = [x["dist"] for x in m]
            row["comm"] = statistics.median(max(s) for s in (x["comm_share"] for x in dist))
            row["grad"] = statistics.median(max(g / s for g, s in zip(x["grad_s"], x["step_s"])) for x in dist)
            sent = statistics.median(statistics.mean(b - g for b, g in zip(x["bytes_sent"], x["grad_bytes_sent"])) for x in dist)
            per_rank_tokens = tokens / P
            row["measured"] = sent / per_rank_tokens / layers / 2  # forward and backward: one pass
            row["analytic"] = 2 * k * d * 4 * (P - 1) / P
            row["grad_bytes"] = statistics.median(statistics.mean(x["grad_bytes_sent"]) for x in dist)
        else:
            base = row
        rows.append(row)
    print("| ranks P | step (ms) | tokens/s | comm share of the step | of which gradient sum | bytes sent per token, MoE layer and pass | analytic 2·k·d·4·(P−1)/P |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["P"] == 1:
            print(f"| 1 | {1e3 * r['step_s']:.0f} | {r['tok_s']:.0f} | – | – | – | – |")
        else:
            print(f"| {r['P']} | {1e3 * r['step_s']:.0f} | {r['tok_s']:.0f} | {100 * r['comm']:.1f}% | {100 * r['grad']:.1f}% | "
                  f"{r['measured']:.0f} B | {r['analytic']:.0f} B |")

    # The estimate: per node, the compute of P = 1 (this machine), the same tokens per node.
    t_c = base["step_s"] / base["tokens"]  # seconds of compute per token on this machine
    d, k, layers, tokens = base["d"], base["k"], base["layers"], base["tokens"]
    # G, the gradient buffer summed: a ring all-reduce moves 2·(P−1)/P of it per rank, G itself at P = 2.
    grad_bytes = next((r["grad_bytes"] for r in rows if r["P"] == 2), 0.0)
    networks = [("InfiniBand HDR, 200 Gb/s: 25 GB/s, 2 µs", 25e9, 2e-6), ("25 GbE: 3.1 GB/s, 20 µs", 3.1e9, 20e-6)]
    print(f"\nEstimate: {tokens} tokens per node per step, compute {1e6 * t_c:.1f} µs per token (measured, P = 1), "
          f"gradient buffer {grad_bytes / 1e6:.1f} MB summed per step; {layers} MoE layers, d = {d}, k = {k}.\n")
    print("| nodes | node compute | network | exchange per step | gradient sum per step | compute per step | communication share | step ÷ compute |")
    print("|---|---|---|---|---|---|---|---|")
    for P in (8, 64, 512):
        for speed, speed_name in ((1, "this machine"), (100, "100× faster")):
            for name, bw, lat in networks:
                # Per layer and step, the rows go out and come back in the forward and again in the
                # backward: 4·k·d·4·(P−1)/P bytes per token each way; seven all-to-alls (counts, x, y;
                # gates, dy, dx, gate gradients), each posting P−1 messages: latency (P−1)·α.
                vol = tokens * layers * 4 * k * d * 4 * (P - 1) / P
                exch = vol / bw + layers * 7 * (P - 1) * lat
                # Ring all-reduce: 2·(P−1)/P of the buffer each way; latency 2·log2(P)·α (tree) per bucket.
                buckets = max(1, math.ceil(grad_bytes / (4 << 20)))
                allr = 2 * (P - 1) / P * grad_bytes / bw + buckets * 2 * math.log2(P) * lat
                comp = t_c * tokens / speed
                step = comp + exch + allr
                print(f"| {P} | {speed_name} | {name} | {1e3 * exch:.2f} ms | {1e3 * allr:.2f} ms | {1e3 * comp:.1f} ms | "
                      f"{100 * (exch + allr) / step:.1f}% | {step / comp:.2f}× |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
