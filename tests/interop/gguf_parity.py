#!/usr/bin/env python3
"""GGUF parity with llama.cpp (docs/INTEROP.md). First, a tiny Mixtral-style model trained here is exported with
`moe export --format gguf` in f32 and Q8_0, loaded by llama.cpp (llama-cpp-python, built from source in
the venv of scripts/interop_venv.sh), and compared with `moe logits` on the same token ids (f32: within
1e-4 of the logits' scale, argmax equal everywhere) and with `moe generate --temperature 0` on the same
prompt (f32: the same greedy tokens). The Q8_0 file must hold, tensor for tensor, the bytes llama.cpp's own
quantizer (llama_model_quantize) makes from the f32 export; its logits are reported. Then tiny random
Qwen2-MoE, OLMoE and GraniteMoE models from transformers, each with a byte-level BPE tokenizer.json trained
by `tokenizers`, are imported, exported to GGUF (llama.cpp's qwen2moe, olmoe and granitemoe with a "gpt2"
vocabulary) and compared the same way, and llama.cpp must tokenize a text as `moe tokenize` does.

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
import numpy as np
from llama_cpp import Llama

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from interop_common import llama_without_extra_buffers, logits_diff, randomize  # noqa: E402

llama_without_extra_buffers()

MOE, WORK = sys.argv[1], sys.argv[2]
TINY = ["model.vocab_size=320", "model.hidden_size=64", "model.num_hidden_layers=2", "model.num_attention_heads=4",
        "model.num_key_value_heads=2", "model.intermediate_size=64", "model.max_position_embeddings=64",
        "model.moe_intermediate_size=64", "model.num_local_experts=4", "train.batch_size=4", "train.eval_every=10",
        "train.eval_windows=4", "train.warmup_steps=2", "train.steps=20"]


def run(*args):
    r = subprocess.run([MOE, *args], capture_output=True, text=True, errors="replace")
    if r.returncode != 0:
        raise SystemExit(f"moe {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def trained(name="gguf-run", extra=()):
    out = os.path.join(WORK, name)
    shutil.rmtree(out, ignore_errors=True)
    rnd = random.Random(5)
    words = ["the", "expert", "router", "token", "loss", "gate", "layer", "of", "and", "mixture", "balance", "{", "}"]
    corpus = os.path.join(WORK, "gguf-corpus.txt")
    with open(corpus, "w") as f:
        for _ in range(3000):
            f.write(" ".join(rnd.choice(words) for _ in range(rnd.randint(4, 12))) + "\n")
    args = ["train", "--threads", "2"]
    for kv in TINY + list(extra) + [f"train.corpus=file:{corpus}", f"train.data_dir={WORK}/gguf-data", f"train.out={out}"]:
        args += ["--set", kv]
    run(*args)
    return out


def llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float64)


QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
               r"\s+(?!\S)|\s+")


def imported(arch, seed):
    """A tiny random HF model of `arch` with a byte-level BPE tokenizer.json, imported into a run folder."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers import Regex, normalizers
    tok = Tokenizer(models.BPE())
    if arch == "qwen2_moe":  # as Qwen2 writes its tokenizer: NFC and a Split by its regex (llama.cpp's "qwen2")
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:  # GPT-2's (llama.cpp's "gpt-2")
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the expert router sends each token to two of eight experts"] * 50, trainer)
    V = tok.get_vocab_size()
    common = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128,
                  rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False)
    if arch == "qwen2_moe":
        cfg = transformers.Qwen2MoeConfig(num_key_value_heads=2, intermediate_size=64, moe_intermediate_size=32, num_experts=4,
                                          num_experts_per_tok=2, shared_expert_intermediate_size=32, norm_topk_prob=False,
                                          **common)
    elif arch == "olmoe":
        cfg = transformers.OlmoeConfig(num_key_value_heads=4, intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                       **dict(common, rms_norm_eps=1e-5))
    else:
        cfg = transformers.GraniteMoeConfig(num_key_value_heads=2, intermediate_size=32, num_local_experts=4,
                                            num_experts_per_tok=2, embedding_multiplier=3.0, residual_multiplier=0.6,
                                            attention_multiplier=0.2, logits_scaling=2.5, **dict(common, tie_word_embeddings=True))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    randomize(model)
    hf_dir, out = os.path.join(WORK, f"gguf-hf-{arch}"), os.path.join(WORK, f"gguf-imported-{arch}")
    for d in (hf_dir, out):
        shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(hf_dir, safe_serialization=True)
    tok.save(os.path.join(hf_dir, "tokenizer.json"))
    run("import", hf_dir, "--out", out)
    return out, V


def compare(src, name, V, text=None):
    """moe against llama.cpp on one run folder: f32 logits, greedy tokens, and (text) tokenization."""
    rnd = random.Random(11)
    ids = [rnd.randrange(V) for _ in range(24)]
    ids_path = os.path.join(WORK, f"gguf-ids-{name}.txt")
    with open(ids_path, "w") as f:
        f.write(" ".join(map(str, ids)) + "\n")
    npy = os.path.join(WORK, f"gguf-moe-logits-{name}.npy")
    run("logits", "--ckpt", src, "--ids", ids_path, "--out", npy, "--threads", "1")
    want = np.load(npy).astype(np.float64)
    with open(os.path.join(WORK, f"gguf-prompt-{name}.txt"), "w") as f:
        f.write(" ".join(map(str, ids[:6])) + "\n")
    out = run("generate", "--ckpt", src, "--prompt-ids", os.path.join(WORK, f"gguf-prompt-{name}.txt"), "--temperature", "0",
              "--max-tokens", "16")
    moe_greedy = [int(x) for x in out.strip().splitlines()[-1].split()[1:]]
    path = os.path.join(WORK, f"model-{name}.gguf")
    if os.path.exists(path):
        os.remove(path)
    run("export", "--ckpt", src, "--format", "gguf", "--out", path)
    llm = Llama(model_path=path, n_ctx=64, n_batch=64, logits_all=True, n_threads=2, verbose=False, type_k=0, type_v=0)
    got = llama_logits(llm, ids)
    err, argmax = logits_diff(got, want)
    llm.reset()
    llm.eval(ids[:6])
    greedy = []
    for _ in range(16):
        greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([greedy[-1]])
    same_tok = True
    if text is not None:
        mine = [int(x) for x in run("tokenize", "--ckpt", src, "--text", text).split()]
        same_tok = llm.tokenize(text.encode(), add_bos=False, special=True) == mine
    ok = err <= 1e-4 and argmax and greedy == moe_greedy and same_tok
    print(f"gguf {name:17s}: max |logit diff| / scale = {err:.2e}  argmax equal: {argmax}  greedy 16 tokens equal: "
          f"{greedy == moe_greedy}  tokenization equal: {same_tok}  {'ok' if ok else 'FAIL'}")
    return ok


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
        err, argmax = logits_diff(got, want)
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
    # A Qwen3-MoE-style model trained here (top-k of the softmax renormalised, per-head QK-norm): llama.cpp's
    # qwen3moe with the sentencepiece vocabulary.
    qwen3 = trained("gguf-run-qwen3", ["model.router=softmax_topk", "model.norm_topk_prob=true", "model.qk_norm=head"])
    results.append(compare(qwen3, "trained-qwen3_moe", 320, "the expert router sends 2 tokens"))
    for arch, seed in [("qwen2_moe", 21), ("olmoe", 22), ("granitemoe", 23)]:
        src, V = imported(arch, seed)
        results.append(compare(src, arch, V, "the expert router sends 2 tokens"))
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
