#!/usr/bin/env python3
"""Decode speed against llama.cpp on the same model and prompt (docs/PERFORMANCE.md): a run's checkpoint
is exported with `moe export --format gguf`, then prefill and greedy generation are timed in `moe generate
--timing` and in llama.cpp (llama-cpp-python, the interop venv of scripts/interop_venv.sh), alternately,
with the same thread count, the same prompt ids and the same number of generated tokens; moe.cpp decodes
from weights in the GGUF file's format (`--weights`: fp32 for f32, bf16, q8_0, the same Q8_0 values as
llama.cpp's). Prints a markdown table (median of ROUNDS, tokens/s) with the CPU and kernel.

    VENV/bin/python scripts/compare_llama_cpp.py MOE CKPT [--threads 2] [--prompt 64] [--tokens 60]
                                                  [--rounds 5] [--dtype f32]
"""
import argparse
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from llama_cpp import Llama, __version__ as llama_cpp_version

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "interop"))
from interop_common import llama_without_extra_buffers  # noqa: E402

# llama.cpp without its extra buffer types (AMX, repacked weights), stated beside the figures.
llama_without_extra_buffers()


def last_logits(llm):
    """The logits of the last token evaluated (llama-cpp-python keeps them in `scores` only with
    logits_all, which would make llama.cpp compute the head over every prompt position)."""
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def cpu_name():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("moe")
    ap.add_argument("ckpt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dtype", default="f32")
    a = ap.parse_args()
    weights = {"f32": "fp32", "bf16": "bf16", "q8_0": "q8_0"}.get(a.dtype)
    assert weights, f"--dtype {a.dtype}: moe generate has no weights of that format (f32, bf16, q8_0)"
    with tempfile.TemporaryDirectory() as tmp:
        gguf = os.path.join(tmp, "model.gguf")
        subprocess.run([a.moe, "export", "--ckpt", a.ckpt, "--format", "gguf", "--dtype", a.dtype, "--out", gguf], check=True,
                       capture_output=True)
        cfg = __import__("json").load(open(os.path.join(a.ckpt, "config.json")))["model"]
        ctx = cfg.get("context_length") or cfg["max_position_embeddings"]
        assert a.prompt + a.tokens <= ctx, f"prompt + tokens = {a.prompt + a.tokens} is beyond the context of {ctx}"
        rnd = random.Random(1)
        prompt = [rnd.randrange(cfg["vocab_size"]) for _ in range(a.prompt)]
        pfile = os.path.join(tmp, "prompt.txt")
        open(pfile, "w").write(" ".join(map(str, prompt)) + "\n")
        llm = Llama(model_path=gguf, n_ctx=ctx, n_batch=ctx, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
        rows = {"moe": ([], []), "llama.cpp": ([], [])}
        for _ in range(a.rounds):
            r = subprocess.run([a.moe, "generate", "--ckpt", a.ckpt, "--prompt-ids", pfile, "--temperature", "0", "--max-tokens",
                                str(a.tokens), "--threads", str(a.threads), "--weights", weights, "--timing"], check=True, capture_output=True, text=True)
            m = re.search(r"prefill (\d+) tokens in [\d.]+ ms \(([\d.]+) tokens/s\), decode (\d+) tokens in [\d.]+ ms \(([\d.]+)", r.stderr)
            greedy_moe = [int(x) for x in r.stdout.strip().splitlines()[-1].split()[1:]]
            rows["moe"][0].append(float(m.group(2)))
            rows["moe"][1].append(float(m.group(4)))
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt)
            t1 = time.perf_counter()
            greedy_llama = []
            for _ in range(a.tokens):
                greedy_llama.append(int(np.argmax(last_logits(llm))))
                llm.eval([greedy_llama[-1]])
            t2 = time.perf_counter()
            rows["llama.cpp"][0].append(a.prompt / (t1 - t0))
            rows["llama.cpp"][1].append(a.tokens / (t2 - t1))
    print(f"CPU: {cpu_name()}, kernel {platform.release()}, {a.threads} threads; llama-cpp-python {llama_cpp_version} "
          f"(no extra buffer types); {a.ckpt} as GGUF {a.dtype}; prompt {a.prompt} tokens, {a.tokens} generated; "
          f"median of {a.rounds}\n")
    print(f"greedy tokens equal: {greedy_moe == greedy_llama} (first 8: moe {greedy_moe[:8]}, llama.cpp {greedy_llama[:8]})\n")
    print("| engine | prefill tokens/s | generation tokens/s |")
    print("| --- | --- | --- |")
    for name, (pre, dec) in rows.items():
        print(f"| {name} | {statistics.median(pre):.0f} | {statistics.median(dec):.0f} |")


if __name__ == "__main__":
    main()
