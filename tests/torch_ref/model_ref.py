#!/usr/bin/python3
"""PyTorch reference of the moe.cpp transformer LM (float64, autograd), built from the references of
its parts (nn_ref.attention, moe_ref.moe_forward).

Usage: model_ref.py CASE.safetensors OUT.safetensors
CASE metadata: "model" (the [model] section of the run config as JSON), "moe" (the MoE layer config
as MoeConfig::to_json), "B", "L". Tensors: "tokens", "targets" (as floats, -1 = ignored) and every
parameter under its model name (+ "model.layers.N.mlp.router.bias" for sigmoid_bias).
OUT: "loss" (cross-entropy + balance losses) and grad.<name> for every parameter.
"""
import json
import sys

import torch
import torch.nn.functional as F

import safetensors_io as st
from moe_ref import moe_forward, swiglu
from nn_ref import attention


def rmsnorm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def main(case_path, out_path):
    t, meta = st.load(case_path)
    m = json.loads(meta["model"])
    moe_cfg = json.loads(meta["moe"])
    B, L = int(meta["B"]), int(meta["L"])
    tokens = torch.tensor(t["tokens"]).long()
    targets = torch.tensor(t["targets"]).long()
    P = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in t.items()
         if n.startswith(("model.", "lm_head.")) and not n.endswith("router.bias")}
    eps = m["rms_norm_eps"]
    H = m["num_attention_heads"]
    KV = m["num_key_value_heads"] or H
    hd = m.get("head_dim", 0) or m["hidden_size"] // H
    x = P["model.embed_tokens.weight"][tokens] * m.get("embedding_multiplier", 1.0)
    rm = m.get("residual_multiplier", 1.0)
    aux = torch.zeros((), dtype=torch.float64)
    for layer in range(m["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rmsnorm(x, P[p + "input_layernorm.weight"], eps)
        acfg = {"B": B, "L": L, "n_heads": H, "n_kv_heads": KV, "head_dim": hd, "rope_theta": m["rope_theta"],
                "qk_norm": m.get("qk_norm", "none"), "norm_eps": eps}
        if m.get("attention_multiplier", 0.0) > 0:
            acfg["scale"] = m["attention_multiplier"]
        aw = {"wq": P[p + "self_attn.q_proj.weight"], "wk": P[p + "self_attn.k_proj.weight"],
              "wv": P[p + "self_attn.v_proj.weight"], "wo": P[p + "self_attn.o_proj.weight"]}
        for w in "qkv":
            if p + f"self_attn.{w}_proj.bias" in P:
                aw["b" + w] = P[p + f"self_attn.{w}_proj.bias"]
        if p + "self_attn.q_norm.weight" in P:
            aw["q_norm"], aw["k_norm"] = P[p + "self_attn.q_norm.weight"], P[p + "self_attn.k_norm.weight"]
        x = x + rm * attention(acfg, aw, h)
        h = rmsnorm(x, P[p + "post_attention_layernorm.weight"], eps)
        if m["ffn"] == "moe" and layer >= m["first_k_dense_replace"]:
            lp = {n[len(p + "mlp."):]: v for n, v in P.items() if n.startswith(p + "mlp.")}
            extras = {"bias": t[p + "mlp.router.bias"]} if p + "mlp.router.bias" in t else {}
            y, losses, _, _ = moe_forward(moe_cfg, lp, h, extras, True, L)
            aux = aux + sum(losses.values(), torch.zeros((), dtype=torch.float64))
        else:
            y = swiglu(h, P[p + "mlp.w1"][0], P[p + "mlp.w3"][0], P[p + "mlp.w2"][0])
        x = x + rm * y
    x = rmsnorm(x, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if m["tie_word_embeddings"] else P["lm_head.weight"]
    loss = F.cross_entropy(x @ head.T / m.get("logits_scaling", 1.0), targets, ignore_index=-1) + aux
    loss.backward()
    out = {"loss": loss.detach().reshape(1).numpy()}
    for n, v in P.items():
        out["grad." + n] = v.grad.numpy()
    st.save(out_path, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
