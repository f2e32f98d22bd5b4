#!/usr/bin/python3
"""PyTorch peer of the moe.cpp language model for training throughput: the same architecture (token
embedding, RMSNorm, causal attention with RoPE, SwiGLU FFN or a Mixtral-style MoE FFN written the
Hugging Face way, final norm, LM head) trained with AdamW and gradient clipping on batches of the
same shape. Reads a moe.cpp TOML preset for the shapes.

  /usr/bin/python3 bench/peers/torch_lm.py --config configs/mixtral-tiny.toml --steps 30 --threads 2

Prints one JSON line with the median tokens/s over the timed steps.
"""
import argparse
import json
import math
import statistics
import time
import tomllib

import torch
import torch.nn.functional as F

from torch_moe import Expert as SwiGLU, SparseMoeBlock


class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w


def rope(x, theta):
    L, hd = x.shape[-2], x.shape[-1]
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = torch.arange(L, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    half = hd // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * emb.cos() + rot * emb.sin()


class Attention(torch.nn.Module):
    def __init__(self, d, heads, theta):
        super().__init__()
        self.h, self.hd, self.theta = heads, d // heads, theta
        self.q = torch.nn.Linear(d, d, bias=False)
        self.k = torch.nn.Linear(d, d, bias=False)
        self.v = torch.nn.Linear(d, d, bias=False)
        self.o = torch.nn.Linear(d, d, bias=False)

    def forward(self, x):
        B, L, d = x.shape
        q = self.q(x).view(B, L, self.h, self.hd).transpose(1, 2)
        k = self.k(x).view(B, L, self.h, self.hd).transpose(1, 2)
        v = self.v(x).view(B, L, self.h, self.hd).transpose(1, 2)
        q, k = rope(q, self.theta), rope(k, self.theta)
        s = q @ k.transpose(-1, -2) / math.sqrt(self.hd)
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
        o = (F.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(B, L, d)
        return self.o(o)


class MoE(SparseMoeBlock):
    """Mixtral's sparse block (torch_moe.SparseMoeBlock, the HF MixtralSparseMoeBlock way) plus the
    Switch aux loss from its router logits."""

    def __init__(self, d, h, n, k, aux, shared_width=0):
        super().__init__(d, h, n, k)
        self.aux = aux
        self.shared = SwiGLU(d, shared_width) if shared_width else None

    def forward(self, x):
        shape = x.shape
        out, logits = super().forward(x.reshape(-1, shape[-1]))
        if self.shared is not None:
            out = out + self.shared(x.reshape(-1, shape[-1]))
        probs = F.softmax(logits, dim=-1)
        sel = torch.topk(probs, self.top_k, dim=-1).indices
        f = F.one_hot(sel, self.n_experts).float().sum((0, 1)) / (logits.shape[0] * self.top_k)
        return out.view(shape), self.aux * self.n_experts * (f * probs.mean(0)).sum()


class LM(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        d = m["hidden_size"]
        self.embed = torch.nn.Embedding(m["vocab_size"], d)
        self.blocks = torch.nn.ModuleList()
        G = m.get("granularity", 1)
        for layer in range(m["num_hidden_layers"]):
            moe = m.get("ffn", "moe") == "moe" and layer >= m.get("first_k_dense_replace", 0)
            shared = m.get("n_shared_experts", 0) * (m.get("shared_expert_intermediate_size", 0) or m["moe_intermediate_size"] // G)
            ffn = (MoE(d, m["moe_intermediate_size"] // G, m["num_local_experts"] * G, m["num_experts_per_tok"] * G,
                       m.get("router_aux_loss_coef", 0.0), shared) if moe else SwiGLU(d, m["intermediate_size"]))
            self.blocks.append(torch.nn.ModuleList([RMSNorm(d, 1e-5), Attention(d, m["num_attention_heads"], 1e4),
                                                    RMSNorm(d, 1e-5), ffn]))
        self.norm = RMSNorm(d, 1e-5)
        self.head = torch.nn.Linear(d, m["vocab_size"], bias=False)

    def forward(self, tok, tgt):
        x = self.embed(tok)
        aux = 0.0
        for n1, attn, n2, ffn in self.blocks:
            x = x + attn(n1(x))
            y = ffn(n2(x))
            if isinstance(y, tuple):
                y, a = y
                aux = aux + a
            x = x + y
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt.view(-1)) + aux


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: the forward under torch.autocast('cpu', dtype=torch.bfloat16)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with open(a.config, "rb") as f:
        cfg = tomllib.load(f)
    m = {"vocab_size": 4096, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
         "intermediate_size": 512, "max_position_embeddings": 128, "num_local_experts": 8,
         "num_experts_per_tok": 2, "moe_intermediate_size": 256, "router_aux_loss_coef": 0.01, "ffn": "moe"}
    m.update(cfg.get("model", {}))
    B = cfg.get("train", {}).get("batch_size", 16)
    L = m["max_position_embeddings"]
    model = LM(m)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    times = []
    for step in range(a.warmup + a.steps):
        tok = torch.randint(0, m["vocab_size"], (B, L))
        tgt = torch.randint(0, m["vocab_size"], (B, L))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = model(tok, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    tps = B * L / statistics.median(times)
    print(json.dumps({"peer": "torch", "torch": torch.__version__, "config": a.config, "threads": a.threads,
                      "precision": a.precision, "batch": B, "seq_len": L, "tokens_per_s": round(tps, 1)}))


if __name__ == "__main__":
    main()
