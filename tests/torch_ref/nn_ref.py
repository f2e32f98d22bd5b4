#!/usr/bin/python3
"""PyTorch reference of the dense blocks of src/nn, in float64 with autograd.

Usage: nn_ref.py CASE.safetensors OUT.safetensors
CASE metadata "module" is rmsnorm | attention | cross_entropy | distill, "config" its JSON settings; tensors hold
the input, the upstream gradient dy (not for cross_entropy) and the parameters. OUT gets y (or loss),
dx and grad.<name> for every parameter. The objective is sum(y * dy), or the mean loss.
"""
import json
import math
import sys

import torch
import torch.nn.functional as F

import safetensors_io as st


def rmsnorm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope(x, theta):
    # x: (B, heads, L, hd), Hugging Face convention.
    L, hd = x.shape[-2], x.shape[-1]
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(L, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    return x * emb.cos() + rotate_half(x) * emb.sin()


def attention(cfg, P, x):
    B, L = cfg["B"], cfg["L"]
    H, KV, hd = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
    T, d = x.shape
    q, k, v = x @ P["wq"].T, x @ P["wk"].T, x @ P["wv"].T
    if "bq" in P:  # Qwen2's q/k/v biases
        q, k, v = q + P["bq"], k + P["bk"], v + P["bv"]
    eps = cfg.get("norm_eps", 1e-5)
    if cfg.get("qk_norm", "none") == "full":  # OLMoE: over the whole projection
        q, k = rmsnorm(q, P["q_norm"], eps), rmsnorm(k, P["k_norm"], eps)
    q, k, v = q.view(B, L, H, hd), k.view(B, L, KV, hd), v.view(B, L, KV, hd)
    if cfg.get("qk_norm", "none") == "head":  # Qwen3: each head's hd values
        q, k = rmsnorm(q, P["q_norm"], eps), rmsnorm(k, P["k_norm"], eps)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    q, k = rope(q, cfg["rope_theta"]), rope(k, cfg["rope_theta"])
    k = k.repeat_interleave(H // KV, dim=1)
    v = v.repeat_interleave(H // KV, dim=1)
    s = q @ k.transpose(-1, -2) * cfg.get("scale", 1.0 / math.sqrt(hd))
    mask = torch.ones(L, L, dtype=torch.bool).triu(1)
    p = F.softmax(s.masked_fill(mask, float("-inf")), dim=-1)
    o = (p @ v).transpose(1, 2).reshape(T, H * hd)
    return o @ P["wo"].T


def main(case_path, out_path):
    t, meta = st.load(case_path)
    module = meta["module"]
    cfg = json.loads(meta.get("config", "{}"))
    x = torch.tensor(t["x"], dtype=torch.float64, requires_grad=True)
    P = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in t.items()
         if n not in ("x", "dy", "targets", "teacher")}
    out = {}
    if module == "cross_entropy":
        targets = torch.tensor(t["targets"], dtype=torch.float64).long()
        loss = F.cross_entropy(x, targets, ignore_index=-1)
        loss.backward()
        out["loss"] = loss.detach().reshape(1).numpy()
    elif module == "distill":
        # weight * mean over counted positions of KL(softmax(teacher) || softmax(x))
        targets = torch.tensor(t["targets"], dtype=torch.float64).long()
        teacher = torch.tensor(t["teacher"], dtype=torch.float64)
        kl = F.kl_div(F.log_softmax(x, -1), F.log_softmax(teacher, -1), log_target=True, reduction="none").sum(-1)
        loss = cfg["weight"] * kl[targets != -1].mean()
        loss.backward()
        out["loss"] = loss.detach().reshape(1).numpy()
    else:
        if module == "rmsnorm":
            y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg["eps"]) * P["w"]
        elif module == "attention":
            y = attention(cfg, P, x)
        else:
            raise SystemExit("unknown module " + module)
        dy = torch.tensor(t["dy"], dtype=torch.float64)
        (y * dy).sum().backward()
        out["y"] = y.detach().numpy()
    out["dx"] = x.grad.numpy()
    for n, p in P.items():
        out["grad." + n] = p.grad.numpy()
    st.save(out_path, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
