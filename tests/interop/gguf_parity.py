#!/usr/bin/env python3
"""GGUF parity with llama.cpp (docs/INTEROP.md): a tiny Mixtral-style model trained here is exported with
`moe export --format gguf` in f32 and Q8_0, loaded by llama.cpp (llama-cpp-python, built from source in
the venv of scripts/interop_venv.sh), and compared with `moe logits` on the same token ids (f32: within
1e-4 of the logits' scale, argmax equal everywhere) and with `moe generate --temperature 0` on the same
prompt (f32: the same greedy tokens). The Q8_0 file must hold, tensor for tensor, the bytes llama.cpp's own
quantizer (llama_model_quantize) makes from the f32 export; its logits are reported.

llama.cpp is run without its extra buffer types (AMX and repacked weights): on Intel CPUs with AMX its
batched Q8_0 matmul segfaults (llama.cpp issue 20824), with llama.cpp's own Q8_0 files as with ours.

    VENV/bin/python tests/interop/gguf_parity.py BUILD/bin/moe WORKDIR
"""
import os
import random
import shutil
import subprocess
import sys

import ctypes

import gguf
import llama_cpp
import llama_cpp.llama
import numpy as np
from llama_cpp import Llama

_default_params = llama_cpp.llama_model_default_params


def _no_extra_buffers():
    p = _default_params()
    p.use_extra_bufts = False
    return p


llama_cpp.llama.llama_cpp.llama_model_default_params = _no_extra_buffers

MOE, WORK = sys.argv[1], sys.argv[2]
TINY = ["model.vocab_size=320", "model.hidden_size=64", "model.num_hidden_layers=2", "model.num_attention_heads=4",
        "model.num_key_value_heads=2", "model.intermediate_size=64", "model.max_position_embeddings=64",
        "model.moe_intermediate_size=64", "model.num_local_experts=4", "train.batch_size=4", "train.eval_every=10",
        "train.eval_windows=4", "train.warmup_steps=2", "train.steps=20"]


def run(*args):
    r = subprocess.run([MOE, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"moe {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def trained():
    out = os.path.join(WORK, "gguf-run")
    shutil.rmtree(out, ignore_errors=True)
    rnd = random.Random(5)
    words = ["the", "expert", "router", "token", "loss", "gate", "layer", "of", "and", "mixture", "balance", "{", "}"]
    corpus = os.path.join(WORK, "gguf-corpus.txt")
    with open(corpus, "w") as f:
        for _ in range(3000):
            f.write(" ".join(rnd.choice(words) for _ in range(rnd.randint(4, 12))) + "\n")
    args = ["train", "--threads", "2"]
    for kv in TINY + [f"train.corpus=file:{corpus}", f"train.data_dir={WORK}/gguf-data", f"train.out={out}"]:
        args += ["--set", kv]
    run(*args)
    return out


def llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float64)


def main():
    os.makedirs(WORK, exist_ok=True)
    src = trained()
    rnd = random.Random(9)
    ids = [rnd.randrange(320) for _ in range(40)]
    ids_path = os.path.join(WORK, "gguf-ids.txt")
    with open(ids_path, "w") as f:
        f.write(" ".join(map(str, ids)) + "\n")
    npy = os.path.join(WORK, "gguf-moe-logits.npy")
    run("logits", "--ckpt", src, "--ids", ids_path, "--out", npy, "--threads", "1")
    want = np.load(npy).astype(np.float64)
    prompt = ids[:8]
    with open(os.path.join(WORK, "gguf-prompt.txt"), "w") as f:
        f.write(" ".join(map(str, prompt)) + "\n")
    out = run("generate", "--ckpt", src, "--prompt-ids", os.path.join(WORK, "gguf-prompt.txt"), "--temperature", "0",
              "--max-tokens", "24")
    moe_greedy = [int(x) for x in out.strip().splitlines()[-1].split()[1:]]
    results = []
    for dtype, tol in [("f32", 1e-4), ("q8_0", None)]:
        path = os.path.join(WORK, f"model-{dtype}.gguf")
        if os.path.exists(path):
            os.remove(path)
        run("export", "--ckpt", src, "--format", "gguf", "--dtype", dtype, "--out", path)
        # An f32 KV cache (llama.cpp keeps f16 by default, which alone moves the logits by ~1e-4).
        llm = Llama(model_path=path, n_ctx=64, n_batch=64, logits_all=True, n_threads=2, verbose=False, type_k=0, type_v=0)
        got = llama_logits(llm, ids)
        scale = np.abs(want).max()
        err = np.abs(got - want).max() / scale
        argmax = bool((got.argmax(-1) == want.argmax(-1)).all())
        # Greedy decoding in llama.cpp from the same prompt.
        llm.reset()
        llm.eval(prompt)
        greedy = []
        for _ in range(24):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            greedy.append(nxt)
            llm.eval([nxt])
        same = greedy == moe_greedy
        if tol is not None:
            ok = err <= tol and argmax and same
            note = ""
        else:  # Q8_0: byte for byte what llama.cpp's quantizer makes of the f32 file
            ref = os.path.join(WORK, "model-llama-q8_0.gguf")
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = 7  # LLAMA_FTYPE_MOSTLY_Q8_0
            assert llama_cpp.llama_model_quantize(os.path.join(WORK, "model-f32.gguf").encode(), ref.encode(),
                                                  ctypes.byref(params)) == 0
            ours = {t.name: t for t in gguf.GGUFReader(path).tensors}
            theirs = {t.name: t for t in gguf.GGUFReader(ref).tensors}
            ok = ours.keys() == theirs.keys() and all(
                ours[n].tensor_type == theirs[n].tensor_type and
                np.asarray(ours[n].data).tobytes() == np.asarray(theirs[n].data).tobytes() for n in ours)
            note = f"  tensors byte-identical to llama.cpp's own Q8_0: {ok} (logits and greedy reported)"
        print(f"gguf {dtype:5s}: max |logit diff| / scale = {err:.2e}  argmax equal: {argmax}  greedy 24 tokens equal: {same}"
              f"{note}  {'ok' if ok else 'FAIL'}")
        results.append(ok)
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
