#!/usr/bin/python3
"""PyTorch peer of moe.cpp's causal self-attention block (src/nn/attention.h), written the way
Hugging Face's Mixtral attention is in PyTorch 1.13 (no scaled_dot_product_attention there):
q, k, v projections, RoPE (rotate-half), scores = q·kᵀ·scale with a causal mask, softmax,
its product with v, the output projection.

Times forward+backward of the whole block and, apart, of its core (scores, softmax, product
with v) on q, k, v that need gradients: the part moe.cpp fuses (nn/attention_core.h).
Prints one JSON line: {"peer": "torch", "ms": ..., "core_ms": ...}.
Run with Debian's torch: /usr/bin/python3 bench/peers/torch_attention.py --batch 16 ...
"""
import argparse
import json
import statistics
import time

import torch


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def core(q, k, v, mask, scale):
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    s = s.masked_fill(mask, float("-inf"))
    return torch.matmul(torch.softmax(s.float(), dim=-1).to(v.dtype), v)


class Attention(torch.nn.Module):
    def __init__(self, d, heads, kv_heads, hd, L, theta=10000.0):
        super().__init__()
        self.h, self.kv, self.hd = heads, kv_heads, hd
        self.q = torch.nn.Linear(d, heads * hd, bias=False)
        self.k = torch.nn.Linear(d, kv_heads * hd, bias=False)
        self.v = torch.nn.Linear(d, kv_heads * hd, bias=False)
        self.o = torch.nn.Linear(heads * hd, d, bias=False)
        inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        ang = torch.arange(L, dtype=torch.float64)[:, None] * inv[None, :]
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos().float())
        self.register_buffer("sin", ang.sin().float())
        self.register_buffer("mask", torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1))

    def forward(self, x):
        B, L, _ = x.shape
        q = self.q(x).view(B, L, self.h, self.hd).transpose(1, 2)
        k = self.k(x).view(B, L, self.kv, self.hd).transpose(1, 2)
        v = self.v(x).view(B, L, self.kv, self.hd).transpose(1, 2)
        q = q * self.cos + rotate_half(q) * self.sin
        k = k * self.cos + rotate_half(k) * self.sin
        if self.kv != self.h:
            k = k.repeat_interleave(self.h // self.kv, dim=1)
            v = v.repeat_interleave(self.h // self.kv, dim=1)
        o = core(q, k, v, self.mask, self.hd ** -0.5)
        return self.o(o.transpose(1, 2).reshape(B, L, self.h * self.hd))


def timed(fn, reps, warmup):
    times = []
    for r in range(warmup + reps):
        t0 = time.perf_counter()
        fn()
        if r >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=0)
    ap.add_argument("--head-dim", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: run under torch.autocast('cpu', dtype=torch.bfloat16)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    kv = a.kv_heads or a.heads
    hd = a.head_dim or a.d_model // a.heads
    B, L = a.batch, a.seq_len
    m = Attention(a.d_model, a.heads, kv, hd, L)
    x = torch.randn(B, L, a.d_model)
    dy = torch.randn(B, L, a.d_model)
    bf16 = a.precision == "bf16"

    def block():
        m.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = m(x)
        y.backward(dy.to(y.dtype))

    q = torch.randn(B, a.heads, L, hd, requires_grad=True)
    k = torch.randn(B, a.heads, L, hd, requires_grad=True)
    v = torch.randn(B, a.heads, L, hd, requires_grad=True)
    do = torch.randn(B, a.heads, L, hd)

    def attention_core():
        q.grad = k.grad = v.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            o = core(q, k, v, m.mask, hd ** -0.5)
        o.backward(do.to(o.dtype))

    ms = timed(block, a.reps, a.warmup)
    core_ms = timed(attention_core, a.reps, a.warmup)
    print(json.dumps({"peer": "torch", "torch": torch.__version__, "threads": a.threads, "precision": a.precision,
                      "ms": ms, "core_ms": core_ms}))


if __name__ == "__main__":
    main()
