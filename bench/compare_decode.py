#!/usr/bin/python3
"""Decoding a trained model from each weight format (`moe generate --weights fp32 | bf16 | q8_0`):
tokens/s, the memory-bandwidth bound measured in the same run and the share of it reached (and the
in-cache bound: the rate of a plain sum re-reading one token's bytes, for a model small enough to
stay in the caches between tokens), and the perplexity each format costs (`moe eval --weights`).
The formats run alternately, ROUNDS times each, greedy, from the same prompt; a median per format.
With --shift it also times generation past the context with the rolled KV cache against prefilling
half the window again (`--context-shift`), and with --batch the tokens/s of B prompts decoded
together (`--prompts`) for each B and format.

  /usr/bin/python3 bench/compare_decode.py --ckpt runs/default [--tokens 1000] [--rounds 5] [--threads 2] [--shift]
                                           [--batch 1,2,4,8,16]
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = ["fp32", "bf16", "q8_0"]


def cpu_name():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def generate(a, extra, prompt=None):
    r = subprocess.run([a.moe, "generate", "--ckpt", a.ckpt] + (prompt or ["--prompt", a.prompt]) + ["--temperature", "0", "--max-tokens",
                        str(a.tokens), "--threads", str(a.threads), "--timing"] + extra, check=True, capture_output=True, text=True)
    t = {}
    m = re.search(r"prefill (\d+) tokens in ([\d.]+) ms .*decode (\d+) tokens in ([\d.]+) ms \(([\d.]+) tokens/s\)", r.stderr)
    t["prefill_tokens"], t["prefill_ms"], t["decode_ms"], t["rate"] = int(m.group(1)), float(m.group(2)), float(m.group(4)), float(m.group(5))
    m = re.search(r"bandwidth bound ([\d.]+) tokens/s = ([\d.]+) GB/s .* / ([\d.]+) MB a token .*decode at ([\d.]+)", r.stderr)
    t["bound"], t["gbps"], t["mb"], t["share"] = (float(m.group(i)) for i in range(1, 5))
    m = re.search(r"in-cache bound ([\d.]+) tokens/s = ([\d.]+) GB/s .*decode at ([\d.]+)", r.stderr)
    t["cbound"], t["cgbps"], t["cshare"] = (float(m.group(i)) for i in range(1, 4)) if m else (float("nan"),) * 3
    m = re.search(r"(\d+) context shifts \(rolled caches\) in ([\d.]+) ms", r.stderr)
    t["shifts"], t["shift_ms"] = (int(m.group(1)), float(m.group(2))) if m else (0, 0.0)
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--moe", default=os.path.join(ROOT, "build", "bin", "moe"))
    ap.add_argument("--prompt", default="And God said")
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shift", action="store_true", help="also time --context-shift roll against reprefill")
    ap.add_argument("--batch", default="", help="comma-separated batch sizes for batched decoding (--prompts)")
    ap.add_argument("--batch-tokens", type=int, default=100, help="tokens per prompt in the batched runs")
    a = ap.parse_args()
    runs = {f: [] for f in FORMATS}
    for _ in range(a.rounds):
        for f in FORMATS:
            runs[f].append(generate(a, ["--weights", f]))
    ppl = {}
    for f in FORMATS:
        r = subprocess.run([a.moe, "eval", "--ckpt", a.ckpt, "--weights", f, "--json", "--threads", str(a.threads)],
                           check=True, capture_output=True, text=True)
        ppl[f] = json.loads(r.stdout)
    print(f"CPU: {cpu_name()}, kernel {platform.release()}, {a.threads} threads; {a.ckpt}; greedy, {a.tokens} tokens "
          f"after \"{a.prompt}\"; median of {a.rounds} alternating runs (min-max)\n")
    print("| weights | MB a token | decode tokens/s | memory bound tokens/s (GB/s) | share of it | in-cache bound tokens/s "
          "(GB/s) | share of it | val loss | perplexity | Δ perplexity |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    base = ppl["fp32"]["perplexity"]
    for f in FORMATS:
        r = runs[f]
        med = lambda k: statistics.median(x[k] for x in r)  # noqa: E731
        lo, hi = min(x["rate"] for x in r), max(x["rate"] for x in r)
        p = ppl[f]["perplexity"]
        print(f"| {f} | {med('mb'):.2f} | {med('rate'):.0f} ({lo:.0f}-{hi:.0f}) | {med('bound'):.0f} ({med('gbps'):.1f}) | "
              f"{med('share'):.2f} | {med('cbound'):.0f} ({med('cgbps'):.1f}) | {med('cshare'):.2f} | {ppl[f]['val_loss']:.5f} | {p:.4f} | {p - base:+.4f} ({(p / base - 1) * 100:+.3f}%) |")
    if a.shift:
        print("\nGeneration past the context (fp32 weights): the rolled cache against a new prefill of half the window\n")
        print("| context shift | decode tokens/s | shifts | ms in shifts | prefill tokens | ms in prefills | tokens/s overall |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        sh = {m: [] for m in ["roll", "reprefill"]}
        for _ in range(a.rounds):
            for m in sh:
                sh[m].append(generate(a, ["--context-shift", m]))
        for m, r in sh.items():
            med = lambda k: statistics.median(x[k] for x in r)  # noqa: E731
            overall = statistics.median(a.tokens / ((x["prefill_ms"] + x["decode_ms"]) / 1e3) for x in r)
            print(f"| {m} | {med('rate'):.0f} | {med('shifts'):.0f} | {med('shift_ms'):.1f} | {med('prefill_tokens'):.0f} | "
                  f"{med('prefill_ms'):.1f} | {overall:.0f} |")
    if a.batch:
        batched(a)


def batched(a):
    sizes = [int(b) for b in a.batch.split(",")]
    lines = ["And God said", "In the beginning", "The LORD is my shepherd", "Blessed are", "And it came to pass",
             "Now the serpent", "Thus saith the LORD", "Hear, O Israel"]
    res = {(b, f): [] for b in sizes for f in FORMATS}
    with tempfile.TemporaryDirectory() as tmp:
        tokens = a.tokens
        a.tokens = a.batch_tokens
        for _ in range(a.rounds):
            for b in sizes:
                path = os.path.join(tmp, f"p{b}.txt")
                open(path, "w").write("\n".join(lines[i % len(lines)] for i in range(b)) + "\n")
                for f in FORMATS:
                    res[(b, f)].append(generate(a, ["--weights", f], ["--prompts", path])["rate"])
        a.tokens = tokens
    print(f"\nBatched decoding (`--prompts`, {a.batch_tokens} tokens each): tokens/s of all sequences together, median of "
          f"{a.rounds}; in brackets the gain over one sequence\n")
    print("| sequences | " + " | ".join(FORMATS) + " |")
    print("| --- |" + " --- |" * len(FORMATS))
    for b in sizes:
        cells = []
        for f in FORMATS:
            m, m1 = statistics.median(res[(b, f)]), statistics.median(res[(sizes[0], f)])
            cells.append(f"{m:.0f} ({m / m1:.2f}x)")
        print(f"| {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
