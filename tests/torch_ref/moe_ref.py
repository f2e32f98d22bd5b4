#!/usr/bin/python3
"""PyTorch reference of the moe.cpp MoE layer (docs/MECHANISMS.md §1-4), in float64 with autograd.

Usage: moe_ref.py CASE.safetensors OUT.safetensors
CASE holds the layer's config (metadata "config", JSON), its parameters under the layer's parameter
names, the input x, the upstream gradient dy, and the random draws of the C++ forward (noise, jitter)
so that both sides see the same numbers. OUT gets y, dx, the gradient of every parameter
("grad.<name>"), every loss term ("loss.<name>") and the selected experts ("experts").
The objective differentiated is sum(y * dy) + sum of the loss terms.

Written independently of the C++ code, the plain way: dense masks over experts, no dispatch plan.
"""
import json
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

import safetensors_io as st


def cv_squared(x):
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    return var / (mean * mean + 1e-10)


def select(cfg, scores, k):
    """Group-limited top-k (no gradient): indices (T, k), best first."""
    T, E = scores.shape
    s = scores.detach()
    if cfg["n_group"] > 1 and cfg["topk_group"] < cfg["n_group"]:
        G = cfg["n_group"]
        grp = s.view(T, G, E // G)
        take = min(2, E // G)
        gscore = grp.topk(take, dim=-1).values.sum(-1)
        keep = gscore.topk(cfg["topk_group"], dim=-1).indices
        gmask = torch.zeros(T, G, dtype=torch.bool)
        gmask.scatter_(1, keep, True)
        s = s.masked_fill(~gmask.repeat_interleave(E // G, dim=1), float("-inf"))
    return s.topk(k, dim=-1).indices


def capacity_keep(cfg, sel, gates, E):
    """Boolean (T, k): which pairs survive capacity."""
    T, k = sel.shape
    keep = torch.ones(T, k, dtype=torch.bool)
    cf = cfg["capacity_factor"]
    if cf <= 0:
        return keep
    C = math.ceil(cf * T * k / E)
    flat_e = sel.reshape(-1).tolist()
    flat_g = gates.detach().reshape(-1).tolist()
    kflat = keep.view(-1)
    for e in range(E):
        pairs = [j for j in range(T * k) if flat_e[j] == e]
        if cfg["drop_policy"] == "probs":
            pairs = sorted(pairs, key=lambda j: -flat_g[j])  # stable: ties keep token order
        for j in pairs[C:]:
            kflat[j] = False
    return keep


def counts_of(sel, E):
    """Pairs routed to each expert; -1 marks an empty slot (expert choice)."""
    flat = sel.reshape(-1)
    flat = flat[flat >= 0]
    return torch.zeros(E, dtype=torch.float64).index_add_(0, flat, torch.ones(flat.numel(), dtype=torch.float64))


def sinkhorn(s, iters=50, tol=1e-4):
    """docs/MECHANISMS.md §2: C = exp(s - rowmax); d0 = 1/(T (C d1)), d1 = 1/(E (d0ᵀ C)); returns T·d0 ⊙ C ⊙ d1."""
    T, E = s.shape
    C = torch.exp(s - s.max(dim=1, keepdim=True).values)
    d1 = torch.ones(E, dtype=torch.float64)
    for _ in range(iters):
        d0 = 1.0 / (T * (C @ d1))
        nd1 = 1.0 / (E * (d0 @ C))
        delta = (nd1 - d1).abs().mean()
        d1 = nd1
        if delta < tol:
            break
    return T * d0[:, None] * C * d1[None, :]


def sample_without_replacement(pi, u, k):
    """k draws per row from pi by inverting the CDF of the experts not yet taken; u: (T, k) uniforms."""
    T, E = pi.shape
    out = torch.zeros(T, k, dtype=torch.long)
    for t in range(T):
        taken = set()
        left = 1.0
        for i in range(k):
            r = float(u[t, i]) * left
            pick = -1
            for e in range(E):
                if e in taken:
                    continue
                pick = e
                r -= float(pi[t, e])
                if r < 0:
                    break
            taken.add(pick)
            left -= float(pi[t, pick])
            out[t, i] = pick
    return out


def swiglu(x, w1, w3, w2):
    return (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T


def moe_forward(cfg, P, x, t, training, seq_len):
    """The MoE layer: y and the loss terms. P: the layer's parameters by name (torch tensors);
    t: the raw draws and buffers of the C++ forward (noise, jitter, bias) as numpy arrays."""
    T, d = x.shape
    E = cfg["num_local_experts"] * cfg["granularity"]
    k = cfg["num_experts_per_tok"] * cfg["granularity"]
    router = cfg["router"]

    xr = x * torch.tensor(t["jitter"], dtype=torch.float64) if "jitter" in t else x
    s = xr @ P["router.weight"].T if router != "hash" else torch.zeros(T, E, dtype=torch.float64)
    losses = {}
    if router == "hash":
        tok = torch.tensor(t["tokens"]).long()
        table = torch.tensor(t["hash_table"]).long()
        sel = torch.stack([(table[tok] + i * (E // k)) % E for i in range(k)], dim=1)
        gates = torch.full((T, k), 1.0 / k, dtype=torch.float64)
        prob = torch.full((T, E), 1.0 / E, dtype=torch.float64)
    elif router == "base":
        # Training: the C++ auction's assignment (its optimality is tested against brute force); eval: argmax.
        sel = torch.tensor(t["assignment"]).long().view(T, 1) if training else select(cfg, s, 1)
        gates = torch.sigmoid(s.gather(1, sel))
        prob = F.softmax(s, dim=-1)
    elif router == "sbase":
        sel = select(cfg, sinkhorn(s.detach()) if training else s, k)
        gates = torch.sigmoid(s.gather(1, sel)) if k == 1 else F.softmax(s.gather(1, sel), dim=-1)
        prob = F.softmax(s, dim=-1)
    elif router == "reinforce":
        prob = F.softmax(s, dim=-1)
        sel = sample_without_replacement(prob.detach(), t["uniform"], k) if training else select(cfg, s, k)
        gates = torch.ones(T, k, dtype=torch.float64)
        if "reward" in t:
            r = torch.tensor(t["reward"], dtype=torch.float64)
            valid = torch.isfinite(r)
            b = float(t["baseline"][0]) if t["baseline"][1] > 0 else float(r[valid].mean())
            adv = torch.where(valid, r - b, torch.zeros_like(r))
            logp = torch.log(prob.gather(1, sel)).sum(-1)
            losses["rl"] = -cfg["reinforce_coef"] / int(valid.sum()) * (adv * logp).sum()
    elif router == "expert_choice":
        prob = F.softmax(s, dim=-1)
        cf = cfg["capacity_factor"] if cfg["capacity_factor"] > 0 else 1.0
        C = min(T, math.ceil(cf * T * k / E))
        sel = torch.full((T, E), -1, dtype=torch.long)
        pd = prob.detach()
        for e in range(E):
            order = sorted(range(T), key=lambda tt: (-float(pd[tt, e]), tt))
            for tt in order[:C]:
                sel[tt, e] = e
        gates = torch.where(sel >= 0, prob, torch.zeros_like(prob))
    elif router == "topk_softmax":
        sel = select(cfg, s, k)
        gates = F.softmax(s.gather(1, sel), dim=-1)
        prob = F.softmax(s, dim=-1)
    elif router == "softmax_topk":
        prob = F.softmax(s, dim=-1)
        sel = select(cfg, prob, k)
        gates = prob.gather(1, sel)
        if cfg["norm_topk_prob"]:
            gates = gates / gates.sum(-1, keepdim=True)
    elif router == "noisy_topk":
        raw = xr @ P["router.noise_weight"].T
        sigma = F.softplus(raw) + 1e-2
        noise = torch.tensor(t["noise"], dtype=torch.float64) if training else torch.zeros(T, E, dtype=torch.float64)
        H = s + noise * sigma
        sel = select(cfg, H, k)
        gates = F.softmax(H.gather(1, sel), dim=-1)
        prob = F.softmax(s, dim=-1)
        w = cfg["noisy_loss_coef"]
        if w > 0:
            importance = torch.zeros(T, E, dtype=torch.float64).scatter(1, sel, gates).sum(0)
            losses["importance"] = w * cv_squared(importance)
            if training and k < E:
                top = H.topk(k + 1, dim=-1).values
                is_in = torch.zeros(T, E, dtype=torch.bool).scatter_(1, sel, True)
                thr = torch.where(is_in, top[:, k:k + 1], top[:, k - 1:k])
                p_in = 0.5 * torch.erfc(-((s - thr) / sigma) / math.sqrt(2.0))
                load = p_in.sum(0)
                losses["load"] = w * cv_squared(load)
            else:
                load = torch.zeros(E, dtype=torch.float64).index_add_(0, sel.reshape(-1), torch.ones(T * k, dtype=torch.float64))
                losses["load"] = w * cv_squared(load).detach()
    elif router == "sigmoid_bias":
        a = torch.sigmoid(s)
        b = torch.tensor(t["bias"], dtype=torch.float64)
        sel = select(cfg, a + b, k)
        ga = a.gather(1, sel)
        gates = cfg["routed_scaling_factor"] * ga / ga.sum(-1, keepdim=True)
        prob = a / a.sum(-1, keepdim=True)
    else:
        raise SystemExit("unknown router " + router)

    # Balance losses on the pre-capacity counts.
    counts = counts_of(sel, E)
    pbar = prob.mean(0)
    f_switch = counts / (T * k)
    if cfg["router_aux_loss_coef"] > 0:
        losses["aux"] = cfg["router_aux_loss_coef"] * E * (f_switch * pbar).sum()
    if cfg["expert_loss_coef"] > 0:
        losses["expert"] = cfg["expert_loss_coef"] * (E * f_switch * pbar).sum()
    if cfg["device_loss_coef"] > 0:
        D = cfg["device_groups"] or cfg["n_group"]
        fd = (E * f_switch).view(D, E // D).mean(-1)
        pd = pbar.view(D, E // D).sum(-1)
        losses["device"] = cfg["device_loss_coef"] * (fd * pd).sum()
    if cfg["seq_aux_loss_coef"] > 0:
        L = seq_len or T
        B = T // L
        tot = 0
        for bi in range(B):
            sl = slice(bi * L, (bi + 1) * L)
            cnt = counts_of(sel[sl], E)
            tot = tot + (E * cnt / (k * L) * prob[sl].mean(0)).sum()
        losses["seq"] = cfg["seq_aux_loss_coef"] * tot / B
    if cfg["router_z_loss_coef"] > 0:
        losses["z"] = cfg["router_z_loss_coef"] * (torch.logsumexp(s, dim=-1) ** 2).mean()

    # Experts: dense loop, each expert on every token it was routed to and kept.
    keep = sel >= 0 if router == "expert_choice" else capacity_keep(cfg, sel, gates, E)
    w1 = P["experts.w1"]
    w3 = P["experts.w3"]
    w2 = P["experts.w2"]
    y = torch.zeros(T, d, dtype=torch.float64)
    for e in range(E):
        m = (sel == e) & keep
        if not m.any():
            continue
        gate_e = (gates * m).sum(-1, keepdim=True)
        tok = m.any(-1)
        y = y + torch.where(tok[:, None], gate_e * swiglu(x, w1[e], w3[e], w2[e]), torch.zeros_like(y))
    if cfg["n_shared_experts"] > 0:
        sh = swiglu(x, P["shared_experts.w1"][0], P["shared_experts.w3"][0], P["shared_experts.w2"][0])
        if cfg["shared_expert_gate"]:
            sh = torch.sigmoid(x @ P["shared_expert_gate.weight"])[:, None] * sh
        y = y + sh
    return y, losses, sel, keep


def main(case_path, out_path):
    t, meta = st.load(case_path)
    cfg = json.loads(meta["config"])
    training = meta.get("training", "1") == "1"
    seq_len = int(meta.get("seq_len", "0"))
    P = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in t.items()
         if not n.startswith(("x", "dy", "noise", "jitter", "bias", "tokens", "hash_table", "assignment",
                              "uniform", "reward", "baseline"))}
    x = torch.tensor(t["x"], dtype=torch.float64, requires_grad=True)
    dy = torch.tensor(t["dy"], dtype=torch.float64)
    y, losses, sel, keep = moe_forward(cfg, P, x, t, training, seq_len)
    J = (y * dy).sum() + sum(losses.values(), torch.zeros((), dtype=torch.float64))
    J.backward()
    out = {"y": y.detach().numpy(), "dx": x.grad.numpy(), "experts": sel.double().numpy(),
           "keep": keep.double().numpy()}
    for n, p in P.items():
        out["grad." + n] = p.grad.numpy() if p.grad is not None else np.zeros(p.shape)
    for n, v in losses.items():
        out["loss." + n] = np.array([float(v)])
    st.save(out_path, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
