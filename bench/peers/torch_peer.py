#!/usr/bin/python3
"""PyTorch peer of the moe.cpp PEER layer, written the way public PEER implementations do it:
nn.Linear queries, BatchNorm1d, torch.topk on each half's sub-key scores, topk again over the k²
sums, and nn.Embedding(sparse=True) tables for the experts' u and v (sparse gradients). Times
forward+backward in training mode and prints one JSON line.

  /usr/bin/python3 bench/peers/torch_peer.py --n-keys 1024 --heads 8 --top-k 16 --d-model 256 \
      --d-key 128 --tokens 4096 --threads 2
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Peer(nn.Module):
    def __init__(self, d, n_keys, heads, top_k, d_key):
        super().__init__()
        self.n, self.h, self.k, self.dk = n_keys, heads, top_k, d_key
        self.query = nn.Linear(d, heads * d_key, bias=False)
        self.bn = nn.BatchNorm1d(heads * d_key)
        self.keys = nn.Parameter(torch.randn(2, n_keys, d_key // 2) / (d_key // 2) ** 0.5)
        self.u = nn.Embedding(n_keys * n_keys, d, sparse=True)
        self.v = nn.Embedding(n_keys * n_keys, d, sparse=True)
        nn.init.normal_(self.u.weight, std=0.02)
        nn.init.normal_(self.v.weight, std=0.02)

    def forward(self, x):
        T = x.shape[0]
        q = self.bn(self.query(x)).view(T, self.h, 2, self.dk // 2)
        s1 = torch.einsum("thd,nd->thn", q[:, :, 0], self.keys[0])
        s2 = torch.einsum("thd,nd->thn", q[:, :, 1], self.keys[1])
        v1, i1 = s1.topk(self.k, dim=-1)
        v2, i2 = s2.topk(self.k, dim=-1)
        sums = (v1.unsqueeze(-1) + v2.unsqueeze(-2)).view(T, self.h, -1)
        ids = (i1.unsqueeze(-1) * self.n + i2.unsqueeze(-2)).view(T, self.h, -1)
        score, pos = sums.topk(self.k, dim=-1)
        experts = ids.gather(-1, pos)
        g = torch.softmax(score, dim=-1)
        z = torch.einsum("thkd,td->thk", self.u(experts), x)
        return torch.einsum("thk,thkd->td", F.gelu(z) * g, self.v(experts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-keys", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--d-key", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    layer = Peer(a.d_model, a.n_keys, a.heads, a.top_k, a.d_key)
    x = torch.randn(a.tokens, a.d_model, requires_grad=True)
    dy = torch.randn(a.tokens, a.d_model)
    times = []
    for r in range(a.reps + 1):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        t0 = time.perf_counter()
        (layer(x) * dy).sum().backward()
        ms = 1e3 * (time.perf_counter() - t0)
        if r > 0:
            times.append(ms)
    print(json.dumps({"peer": "pytorch", "torch": torch.__version__, "threads": a.threads, "tokens": a.tokens,
                      "n_keys": a.n_keys, "ms": statistics.median(times)}))


if __name__ == "__main__":
    main()
