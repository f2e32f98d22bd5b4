#!/usr/bin/python3
"""PyTorch reference of the moe.cpp PEER layer (docs/MECHANISMS.md §5), in float64 with autograd.

Usage: peer_ref.py CASE.safetensors OUT.safetensors
CASE holds the layer's config (metadata: n_keys, heads, top_k, d_key, query_bn, score, activation,
bn_eps, bn_momentum, training), its parameters and buffers (query.weight, query_bn.weight,
query_bn.bias, running_mean, running_var, sub_keys.0, sub_keys.1, experts.u, experts.v), the input x
and the upstream gradient dy. OUT gets y, dx, "grad.<name>" for every parameter (dense: the tables'
gradients are zero outside the retrieved rows), the selected experts (T, h, k) and the running
statistics after the forward. The objective differentiated is sum(y * dy).

Written independently of the C++ code, the plain way: every one of the N = n_keys² experts is
scored (brute force), no product-key search, and F.batch_norm does the normalisation.
"""
import sys

import torch
import torch.nn.functional as F

import safetensors_io as st


def main(case_path, out_path):
    t, meta = st.load(case_path)
    n, H, K, dk = (int(meta[k]) for k in ("n_keys", "heads", "top_k", "d_key"))
    query_bn = meta["query_bn"] == "1"
    training = meta["training"] == "1"
    P = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in t.items()
         if k not in ("running_mean", "running_var", "dy")}
    x, wq = P["x"], P["query.weight"]
    k1, k2, u, v = P["sub_keys.0"], P["sub_keys.1"], P["experts.u"], P["experts.v"]
    dy = torch.tensor(t["dy"], dtype=torch.float64)
    T, d = x.shape
    q = x @ wq.T  # (T, h·dk)
    running_mean = torch.tensor(t["running_mean"], dtype=torch.float64)
    running_var = torch.tensor(t["running_var"], dtype=torch.float64)
    if query_bn:  # updates the running statistics in training (unbiased variance), as nn.BatchNorm1d
        q = F.batch_norm(q, running_mean, running_var, P["query_bn.weight"], P["query_bn.bias"], training,
                         float(meta["bn_momentum"]), float(meta["bn_eps"]))
    q = q.view(T, H, dk)
    half = dk // 2
    # Every expert's score: s[t, h, i1·n + i2] = q1·K1[i1] + q2·K2[i2].
    s1 = q[..., :half] @ k1.T  # (T, H, n)
    s2 = q[..., half:] @ k2.T
    scores = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).reshape(T, H, n * n)
    # Top k, ties to the lower index: a stable sort on the negated scores.
    order = torch.sort(-scores.detach(), dim=-1, stable=True).indices[..., :K]
    top = scores.gather(-1, order)  # (T, H, K)
    g = torch.softmax(top, dim=-1) if meta["score"] == "softmax" else torch.sigmoid(top)
    ue, ve = u[order], v[order]  # (T, H, K, d)
    z = (ue * x[:, None, None, :]).sum(-1)
    a = F.gelu(z) if meta["activation"] == "gelu" else F.relu(z)
    y = ((g * a)[..., None] * ve).sum(dim=(1, 2))
    (y * dy).sum().backward()
    out = {"y": y.detach().numpy(), "experts": order.double().numpy()}
    for name, p in P.items():
        out[("dx" if name == "x" else "grad." + name)] = p.grad.numpy()
    if query_bn:
        out["running_mean"] = running_mean.numpy()
        out["running_var"] = running_var.numpy()
    st.save(out_path, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
