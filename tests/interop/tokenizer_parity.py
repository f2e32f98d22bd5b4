#!/usr/bin/env python3
"""The byte-level BPE of Hugging Face tokenizer.json files (src/data/bpe_tokenizer.cpp) against the
`tokenizers` package itself (docs/INTEROP.md): tokenizers trains two byte-level BPE tokenizers, one as
Qwen2 builds them (NFC, a Split by Qwen's regex, ByteLevel without its regex, special tokens) and one as
GPT-2 / GPT-NeoX do (ByteLevel with its own regex), saves tokenizer.json, and `moe tokenize` must give
the same ids on a fixed text (Unicode in composed and decomposed forms, CJK, emoji, digits,
contractions, tabs, newlines, runs of spaces, special tokens inside the text), and decode them back to
the same text.

    VENV/bin/python tests/interop/tokenizer_parity.py BUILD/bin/moe WORKDIR
"""
import os
import subprocess
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

MOE, WORK = sys.argv[1], sys.argv[2]
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
               r"\s+(?!\S)|\s+")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TRAIN = ["The mixture of experts routes each token to k of E experts.", "Don't they'll we've I'm it's",
         "def forward(self, x):\n\treturn self.w2(F.silu(self.w1(x)) * self.w3(x))\n", "Über café naïve résumé façade",
         "混合专家模型 路由 负载均衡 专家", "emoji 🙂🚀 and numbers 1234567 3.14159", "    indented    spaces\n\n\nnewlines"] * 30
TEXTS = ["Hello world! The router's top-2 experts; they'll load-balance (E=8, k=2).",
         "Cafe\u0301 vs café: NFC composes e + \u0301 into é.",
         "混合专家（MoE）把每个词元路由到 k 个专家。 emoji: 🙂🚀🧪",
         "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n",
         "tabs\tand  double  spaces   and trailing   \n\n  \r\n end<|endoftext|>",
         "I'M SHOUTING, DON'T. Numbers: 3.14159, 2e-5, 0x1F."]


def build(kind):
    tok = Tokenizer(models.BPE())
    if kind == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(TRAIN, trainer)
    path = os.path.join(WORK, f"tokenizer-{kind}.json")
    tok.save(path)
    return tok, path


def moe(*args):
    r = subprocess.run([MOE, "tokenize", *args], capture_output=True)  # bytes: "\r\n" must stay as it is
    if r.returncode != 0:
        raise SystemExit(f"moe tokenize {' '.join(args)} failed: {r.stderr.decode()}")
    return r.stdout.decode("utf-8")


def main():
    os.makedirs(WORK, exist_ok=True)
    results = []
    for kind in ("qwen2", "gpt2"):
        tok, path = build(kind)
        for i, text in enumerate(TEXTS):
            want = tok.encode(text).ids
            tf = os.path.join(WORK, f"text-{kind}-{i}.txt")
            with open(tf, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            got = [int(x) for x in moe("--tokenizer", path, "--file", tf).split()]
            idf = os.path.join(WORK, f"ids-{kind}-{i}.txt")
            with open(idf, "w") as f:
                f.write(" ".join(map(str, want)) + "\n")
            back = moe("--tokenizer", path, "--decode", idf)[:-1]  # less the newline moe ends with
            want_back = tok.decode(want, skip_special_tokens=False)
            ok = got == want and back == want_back
            if not ok:
                print(f"{kind} text {i}: ids equal {got == want}, decode equal {back == want_back}\n  want {want}\n  got  {got}")
            results.append(ok)
        print(f"{kind}: {sum(results[-len(TEXTS):])}/{len(TEXTS)} texts encode to the same ids and decode to the same text")
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
