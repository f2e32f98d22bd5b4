#!/usr/bin/python3
"""`moe import`, `moe export`, `moe logits` and `moe eval --ids` end to end without transformers (the
parity with transformers is tests/interop/hf_parity.py, label interop):

  roundtrip  a tiny model trained here, exported (f32 and bf16) and imported again: the same logits
             (f32: bit for bit), the same `eval --ids` loss; the .npy and .safetensors logits agree
  bad-input  a truncated shard, an index entry naming the wrong file, an unsupported architecture,
             DeepSeek's latent attention, rope_scaling, a config/weights mismatch (shape, extra
             tensor, missing tensor), an --out that holds a run, a bad token id, a GGUF export of a
             PEER model, over an existing file, or of a model llama.cpp would compute differently
             (Qwen2-MoE with renormalised gates): each a one-line error, a non-zero exit, and nothing
             left behind or written over

    interop_cli.py MOE MODE
"""
import json
import os
import pathlib
import random
import shutil
import struct
import sys
import tempfile
from array import array

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from cli_helpers import one_line_error, run  # noqa: E402

TINY = ["model.vocab_size=320", "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
        "model.intermediate_size=64", "model.max_position_embeddings=16", "model.moe_intermediate_size=32",
        "model.num_local_experts=4", "train.batch_size=4", "train.eval_every=5", "train.eval_windows=4",
        "train.warmup_steps=2", "train.steps=6"]


def trained(tmp):
    words = ["the", "expert", "router", "token", "loss", "gate", "layer", "of", "and", "mixture", "balance"]
    rnd = random.Random(1)
    corpus = tmp / "corpus.txt"
    corpus.write_text("".join(" ".join(rnd.choice(words) for _ in range(rnd.randint(4, 12))) + "\n" for _ in range(3000)))
    args = ["train", "--threads", "2"]
    for kv in TINY + [f"train.corpus=file:{corpus}", f"train.data_dir={tmp}/data", f"train.out={tmp}/run"]:
        args += ["--set", kv]
    run(args)
    return tmp / "run"


def npy(path):
    raw = pathlib.Path(path).read_bytes()
    n = struct.unpack("<H", raw[8:10])[0]
    return array("f", raw[10 + n:]).tolist()


def safetensors_floats(path, name):
    raw = pathlib.Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    h = json.loads(raw[8:8 + n])[name]
    b, e = h["data_offsets"]
    return array("f", raw[8 + n + b:8 + n + e]).tolist(), h["shape"]


def roundtrip(tmp):
    src = trained(tmp)
    ids = tmp / "ids.txt"
    rnd = random.Random(2)
    ids.write_text("\n".join(" ".join(str(rnd.randrange(320)) for _ in range(12)) for _ in range(2)) + "\n")
    run(["logits", "--ckpt", str(src), "--ids", str(ids), "--out", str(tmp / "a.npy")])
    run(["logits", "--ckpt", str(src), "--ids", str(ids), "--out", str(tmp / "a.safetensors")])
    a = npy(tmp / "a.npy")
    b, shape = safetensors_floats(tmp / "a.safetensors", "logits")
    assert shape == [2, 12, 320] and a == b, f"npy and safetensors logits differ (shape {shape})"
    ce = json.loads(run(["eval", "--ckpt", str(src), "--ids", str(ids), "--json"]).stdout)
    assert ce["predictions"] == 22 and ce["sequences"] == 2, ce
    run(["export", "--ckpt", str(src), "--format", "hf", "--out", str(tmp / "hf")])
    cfg = json.loads((tmp / "hf/config.json").read_text())
    assert cfg["model_type"] == "mixtral" and cfg["architectures"] == ["MixtralForCausalLM"], cfg
    assert (tmp / "hf/tokenizer.model").exists()
    run(["import", str(tmp / "hf"), "--out", str(tmp / "back")])
    run(["logits", "--ckpt", str(tmp / "back"), "--ids", str(ids), "--out", str(tmp / "b.npy")])
    assert npy(tmp / "b.npy") == a, "export → import changed the logits"
    ce2 = json.loads(run(["eval", "--ckpt", str(tmp / "back"), "--ids", str(ids), "--json"]).stdout)
    assert ce2["mean_ce"] == ce["mean_ce"], (ce, ce2)
    run(["export", "--ckpt", str(src), "--dtype", "bf16", "--out", str(tmp / "hf16")])
    run(["import", str(tmp / "hf16"), "--out", str(tmp / "back16")])
    run(["logits", "--ckpt", str(tmp / "back16"), "--ids", str(ids), "--out", str(tmp / "c.npy")])
    c = npy(tmp / "c.npy")
    scale = max(abs(x) for x in a)
    err = max(abs(x - y) for x, y in zip(a, c)) / scale
    assert 0 < err < 0.05, f"bf16 export: logits moved by {err:.3g} of their scale"
    print(f"roundtrip: f32 export → import bit-identical logits, eval --ids {ce['mean_ce']:.6f}; bf16: {err:.2e} of scale")


def bad_input(tmp):
    src = trained(tmp)
    run(["export", "--ckpt", str(src), "--out", str(tmp / "hf")])
    hf = tmp / "hf"
    cfg = json.loads((hf / "config.json").read_text())

    def variant(name, edit_config=None, edit_files=None):
        d = tmp / name
        shutil.copytree(hf, d)
        if edit_config:
            c = json.loads(json.dumps(cfg))
            edit_config(c)
            (d / "config.json").write_text(json.dumps(c))
        if edit_files:
            edit_files(d)
        return d

    def refused(d, expect, out_name):
        out = tmp / out_name
        one_line_error(["import", str(d), "--out", str(out)], expect)
        assert not out.exists(), f"{out} was left behind"
        assert not [p for p in tmp.iterdir() if p.name.startswith(out_name + ".tmp")], "a temporary folder was left"

    def shard(d, drop=None):  # the weights split in two files with an index, as the hub stores big models
        raw = (d / "model.safetensors").read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        header.pop("__metadata__", None)
        names = sorted(k for k in header if k != drop)
        halves = [names[:len(names) // 2], names[len(names) // 2:]]
        weight_map = {}
        for i, part in enumerate(halves):
            fname = f"model-0000{i + 1}-of-00002.safetensors"
            h, blobs, off = {}, [], 0
            for k in part:
                b, e = header[k]["data_offsets"]
                blobs.append(raw[8 + n + b:8 + n + e])
                h[k] = dict(header[k], data_offsets=[off, off + e - b])
                off += e - b
                weight_map[k] = fname
            hb = json.dumps(h).encode()
            (d / fname).write_bytes(struct.pack("<Q", len(hb)) + hb + b"".join(blobs))
        (d / "model.safetensors").unlink()
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        return weight_map

    sharded = variant("sharded", edit_files=shard)
    run(["import", str(sharded), "--out", str(tmp / "from-shards")])  # the sharded folder itself imports

    def truncate(d):
        shard(d)
        p = d / "model-00002-of-00002.safetensors"
        p.write_bytes(p.read_bytes()[:-100])
    refused(variant("truncated", edit_files=truncate), "model-00002-of-00002.safetensors", "out-truncated")

    def misindex(d):
        wm = shard(d)
        k = sorted(wm)[0]
        wm[k] = "model-00002-of-00002.safetensors" if wm[k].startswith("model-00001") else "model-00001-of-00002.safetensors"
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    refused(variant("misindexed", edit_files=misindex), "which does not hold it", "out-misindexed")

    def lost_shard(d):
        shard(d)
        (d / "model-00001-of-00002.safetensors").unlink()
    refused(variant("lost-shard", edit_files=lost_shard), "model-00001-of-00002.safetensors", "out-lost")
    refused(variant("llama", lambda c: c.update(model_type="llama")), 'model_type "llama" is not supported', "out-llama")
    refused(variant("mla", lambda c: c.update(model_type="deepseek_v3", kv_lora_rank=512)), "multi-head latent attention",
            "out-mla")
    refused(variant("rope", lambda c: c.update(rope_scaling={"type": "yarn", "factor": 4.0})), '"rope_scaling"', "out-rope")
    refused(variant("gelu", lambda c: c.update(hidden_act="gelu")), '"hidden_act"', "out-gelu")
    refused(variant("wide", lambda c: c.update(hidden_size=48, head_dim=16)), "has shape [320, 32]", "out-wide")
    refused(variant("fewer-experts", lambda c: c.update(num_local_experts=3)), "gate.weight' has shape [4, 32]", "out-fewer")
    refused(variant("fewer-layers", lambda c: c.update(num_hidden_layers=1)), "is not part of the model", "out-layers")
    refused(variant("more-experts", lambda c: c.update(num_local_experts=5)), "gate.weight' has shape [4, 32]", "out-more")
    refused(variant("missing", edit_files=lambda d: shard(d, "model.layers.1.block_sparse_moe.experts.2.w3.weight")),
            "experts.2.w3.weight' is missing", "out-missing")
    refused(variant("no-config", edit_files=lambda d: (d / "config.json").unlink()), "config.json", "out-no-config")
    refused(variant("not-json", edit_files=lambda d: (d / "config.json").write_text("{oops")), "not valid JSON", "out-not-json")
    one_line_error(["import", str(hf), "--out", str(src)], "already holds a run")
    ids = tmp / "ids.txt"
    ids.write_text("1 2 3\n4 5 999\n")
    one_line_error(["eval", "--ckpt", str(src), "--ids", str(ids)], "ids.txt:2: token id 999 is outside")
    ids.write_text("1 2 x3\n")
    one_line_error(["logits", "--ckpt", str(src), "--ids", str(ids), "--out", str(tmp / "l.npy")], "'x3' is not a token id")
    ids.write_text("1 2 3\n4 5\n")
    one_line_error(["logits", "--ckpt", str(src), "--ids", str(ids), "--out", str(tmp / "l.npy")], "give them one length")
    one_line_error(["logits", "--ckpt", str(src), "--ids", str(ids), "--out", str(tmp / "l.txt")], ".npy or .safetensors")
    (tmp / "full").mkdir()
    (tmp / "full/x").write_text("x")
    one_line_error(["export", "--ckpt", str(src), "--out", str(tmp / "full")], "not an empty folder")
    peer = tmp / "peer-run"
    args = ["train", "--threads", "2"]
    for kv in TINY + ["model.ffn=peer", "model.peer.n_keys=8", "model.peer.d_key=8", "model.peer.heads=2", "model.peer.top_k=2",
                      "train.steps=2", f"train.corpus=file:{tmp}/corpus.txt", f"train.data_dir={tmp}/data", f"train.out={peer}"]:
        args += ["--set", kv]
    run(args)
    one_line_error(["export", "--ckpt", str(peer), "--out", str(tmp / "peer-hf")], 'model.ffn = "peer"')
    assert not (tmp / "peer-hf").exists()
    one_line_error(["export", "--ckpt", str(peer), "--format", "gguf", "--out", str(tmp / "peer.gguf")], 'model.ffn = "peer"')
    assert not (tmp / "peer.gguf").exists()
    (tmp / "taken.gguf").write_text("x")
    one_line_error(["export", "--ckpt", str(src), "--format", "gguf", "--out", str(tmp / "taken.gguf")], "already exists")
    assert (tmp / "taken.gguf").read_text() == "x"
    qwen = tmp / "qwen-run"
    args = ["train", "--threads", "2"]
    for kv in TINY + ["model.router=softmax_topk", "model.norm_topk_prob=true", "train.steps=2",
                      f"train.corpus=file:{tmp}/corpus.txt", f"train.data_dir={tmp}/data", f"train.out={qwen}"]:
        args += ["--set", kv]
    run(args)
    one_line_error(["export", "--ckpt", str(qwen), "--format", "gguf", "--out", str(tmp / "qwen.gguf")],
                   "does not renormalise the top-k gates")
    assert not (tmp / "qwen.gguf").exists()
    print("bad-input: every refusal one line, nothing left behind")


def main():
    mode = sys.argv[2]
    with tempfile.TemporaryDirectory() as t:
        {"roundtrip": roundtrip, "bad-input": bad_input}[mode](pathlib.Path(t))


if __name__ == "__main__":
    main()
