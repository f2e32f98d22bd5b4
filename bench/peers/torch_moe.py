#!/usr/bin/python3
"""PyTorch peer of the moe.cpp MoE layer, written the way Hugging Face's
MixtralSparseMoeBlock is: router -> softmax -> top-k -> renormalise, then a
Python loop over experts that gathers each expert's tokens with torch.where,
runs its SwiGLU and index_adds the gated result back.

Prints one JSON line: {"peer": "torch", "ms": median forward+backward ms, ...}.
Run with Debian's torch: /usr/bin/python3 bench/peers/torch_moe.py --tokens 4096 ...
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


class Expert(torch.nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.w1 = torch.nn.Linear(d, h, bias=False)
        self.w3 = torch.nn.Linear(d, h, bias=False)
        self.w2 = torch.nn.Linear(h, d, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoeBlock(torch.nn.Module):
    """Mixtral's block: top-k of the router logits, softmax renormalised over them."""

    def __init__(self, d, h, n_experts, top_k):
        super().__init__()
        self.top_k = top_k
        self.n_experts = n_experts
        self.gate = torch.nn.Linear(d, n_experts, bias=False)
        self.experts = torch.nn.ModuleList([Expert(d, h) for _ in range(n_experts)])

    def forward(self, x):
        logits = self.gate(x)
        weights = F.softmax(logits, dim=1, dtype=torch.float)
        weights, selected = torch.topk(weights, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        mask = F.one_hot(selected, num_classes=self.n_experts).permute(2, 1, 0)
        for e in range(self.n_experts):
            idx, top_x = torch.where(mask[e])
            if top_x.numel() == 0:
                continue
            y = self.experts[e](x[top_x]) * weights[top_x, idx, None]
            out.index_add_(0, top_x, y.to(x.dtype))
        return out, logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--d-ff", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--granularity", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: run under torch.autocast('cpu', dtype=torch.bfloat16)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    g = a.granularity
    if a.d_ff % g:
        raise SystemExit("--d-ff must be divisible by --granularity")
    block = SparseMoeBlock(a.d_model, a.d_ff // g, a.experts * g, a.top_k * g)
    x = torch.randn(a.tokens, a.d_model, requires_grad=True)
    dy = torch.randn(a.tokens, a.d_model)
    times = []
    for r in range(a.warmup + a.reps):
        block.zero_grad(set_to_none=True)
        x.grad = None
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            y, _ = block(x)
        y.float().backward(dy)
        t = (time.perf_counter() - t0) * 1e3
        if r >= a.warmup:
            times.append(t)
    ms = statistics.median(times)
    h = a.d_ff // g
    flops = 9.0 * 2 * a.tokens * (a.top_k * g) * a.d_model * h
    print(json.dumps({"peer": "torch", "torch": torch.__version__, "threads": a.threads,
                      "tokens": a.tokens, "d_model": a.d_model, "d_ff": a.d_ff,
                      "experts": a.experts, "top_k": a.top_k, "granularity": g, "precision": a.precision,
                      "ms": round(ms, 3), "gflops": round(flops / ms / 1e6, 2)}))


if __name__ == "__main__":
    main()
