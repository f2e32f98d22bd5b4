#!/usr/bin/env python3
"""Import parity with Hugging Face transformers (docs/INTEROP.md): for each architecture, a tiny randomly
initialised model is built by transformers, saved as safetensors (sharded, and in bf16, for some), imported
with `moe import`, and its logits (`moe logits`) and mean cross-entropy (`moe eval --ids`) compared with
transformers' own forward on the same token ids.

Run by ctest (label interop) with the venv of scripts/interop_venv.sh:
    VENV/bin/python tests/interop/hf_parity.py BUILD/bin/moe WORKDIR
"""
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from interop_common import logits_diff, randomize  # noqa: E402

transformers.logging.set_verbosity_error()

MOE, WORK = sys.argv[1], sys.argv[2]
warnings.filterwarnings("ignore")
TOL = 1e-4  # of the logits' scale


def tiny(arch):
    common = dict(vocab_size=300, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False)
    if arch == "mixtral":
        return transformers.MixtralConfig(intermediate_size=48, num_local_experts=6, num_experts_per_tok=2, **common)
    if arch == "mixtral_head_dim":  # heads wider than hidden_size / num_attention_heads (24 against 16)
        return transformers.MixtralConfig(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, head_dim=24,
                                          **common)
    if arch == "qwen2_moe":
        return transformers.Qwen2MoeConfig(intermediate_size=96, moe_intermediate_size=40, num_experts=6, num_experts_per_tok=2,
                                           shared_expert_intermediate_size=56, norm_topk_prob=False, decoder_sparse_step=1,
                                           mlp_only_layers=[1], **common)
    if arch == "qwen2_moe_norm":
        return transformers.Qwen2MoeConfig(intermediate_size=96, moe_intermediate_size=40, num_experts=8, num_experts_per_tok=3,
                                           shared_expert_intermediate_size=32, norm_topk_prob=True, **common)
    if arch == "olmoe":
        return transformers.OlmoeConfig(intermediate_size=40, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
                                        **common)
    if arch == "granitemoe":
        c = dict(common, tie_word_embeddings=True)
        return transformers.GraniteMoeConfig(intermediate_size=40, num_local_experts=4, num_experts_per_tok=2,
                                             embedding_multiplier=3.0, residual_multiplier=0.6, attention_multiplier=0.2,
                                             logits_scaling=2.5, **c)
    raise ValueError(arch)


def build(arch, seed):
    torch.manual_seed(seed)
    cfg = tiny(arch)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    randomize(model)
    return model


def run(*args):
    r = subprocess.run([MOE, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"moe {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def check(arch, seed, dtype=torch.float32, shard=None):
    label = f"{arch}" + (f" {str(dtype).split('.')[-1]}" if dtype != torch.float32 else "") + (" sharded" if shard else "")
    model = build(arch, seed)
    hf_dir = os.path.join(WORK, f"hf-{arch}-{seed}")
    out = os.path.join(WORK, f"run-{arch}-{seed}")
    for d in (hf_dir, out):
        shutil.rmtree(d, ignore_errors=True)
    saved = model.to(dtype)
    kw = {"max_shard_size": shard} if shard else {}
    saved.save_pretrained(hf_dir, safe_serialization=True, **kw)
    # The reference reads the same files back in float32 (bf16/f16 → f32 is exact), so its RoPE tables
    # are computed afresh rather than rounded with the weights.
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    if shard:
        assert os.path.exists(os.path.join(hf_dir, "model.safetensors.index.json")), "expected a sharded checkpoint"
    run("import", hf_dir, "--out", out)

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (2, 17), generator=g)
    ids_path = os.path.join(WORK, f"ids-{arch}-{seed}.txt")
    with open(ids_path, "w") as f:
        for row in ids.tolist():
            f.write(" ".join(map(str, row)) + "\n")
    with torch.no_grad():
        want = model(ids).logits.double()
    npy = os.path.join(WORK, f"logits-{arch}-{seed}.npy")
    run("logits", "--ckpt", out, "--ids", ids_path, "--out", npy, "--threads", "1")
    got = torch.from_numpy(np.load(npy)).double()
    assert got.shape == want.shape, f"{label}: shape {tuple(got.shape)} vs transformers {tuple(want.shape)}"
    err, argmax_same = logits_diff(got, want)
    ce_want = F.cross_entropy(want[:, :-1].reshape(-1, want.shape[-1]), ids[:, 1:].reshape(-1)).item()
    j = json.loads(run("eval", "--ckpt", out, "--ids", ids_path, "--json"))
    ce_err = abs(j["mean_ce"] - ce_want)
    ok = err <= TOL and argmax_same and ce_err <= 1e-4
    print(f"{label:28s} max |logit diff| / scale = {err:.2e}  argmax equal: {argmax_same}  "
          f"CE moe {j['mean_ce']:.6f} transformers {ce_want:.6f}  {'ok' if ok else 'FAIL'}")
    return ok


def import_oracle(model, tensors, config, hf_dir, out, seed, name):
    """Writes an oracle's tensors and config.json as an HF folder, imports it, and compares moe's logits
    with the oracle's on random ids: (ids, moe's logits, max |diff| / scale, argmax equal)."""
    from safetensors.torch import save_file
    save_file(tensors, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(config, f)
    run("import", hf_dir, "--out", out)
    ids = torch.randint(0, config["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = model(ids).logits.double()
    got = logits_of_moe(out, ids, f"{name}-{seed}")
    return (ids, got) + logits_diff(got, want)


def check_qwen3(seed):
    """Qwen3-MoE is not in transformers 4.49 (the newest on Debian's torch 1.13). Its oracle here is
    transformers' Qwen2-MoE with what Qwen3-MoE changes: q/k/v biases and the shared expert zeroed, and
    Qwen3's QK-norm (an RMSNorm over each head's values of q and k, before RoPE, as modeling_qwen3_moe
    writes it) hooked onto q_proj and k_proj. The weights are saved under Qwen3-MoE's names with a
    qwen3_moe config.json, imported, and compared."""
    torch.manual_seed(seed)
    cfg = transformers.Qwen2MoeConfig(vocab_size=300, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                                      rope_theta=10000.0, tie_word_embeddings=False, intermediate_size=96,
                                      moe_intermediate_size=40, num_experts=6, num_experts_per_tok=2,
                                      shared_expert_intermediate_size=8, norm_topk_prob=True)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    hd, eps = 16, cfg.rms_norm_eps
    norms = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias") or "shared_expert" in name:
                p.zero_()
            elif p.dim() >= 2:
                p.copy_(0.08 * torch.randn_like(p))
        for l, layer in enumerate(model.model.layers):
            for w in ("q", "k"):
                weight = 1.0 + 0.3 * torch.randn(hd)
                norms[f"model.layers.{l}.self_attn.{w}_norm.weight"] = weight

                def qk_norm(_m, _inp, out, weight=weight):
                    x = out.view(*out.shape[:-1], -1, hd).float()
                    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
                    return (weight * x).view(out.shape)
                getattr(layer.self_attn, f"{w}_proj").register_forward_hook(qk_norm)
    hf_dir = os.path.join(WORK, f"hf-qwen3_moe-{seed}")
    out = os.path.join(WORK, f"run-qwen3_moe-{seed}")
    for d in (hf_dir, out):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(hf_dir)
    tensors = {n: t.contiguous() for n, t in model.state_dict().items()
               if not n.endswith(".bias") and "shared_expert" not in n and "rotary_emb" not in n}
    tensors.update(norms)
    config = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 300, "hidden_size": 64,
              "intermediate_size": 96, "moe_intermediate_size": 40, "num_experts": 6, "num_experts_per_tok": 2,
              "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": hd,
              "max_position_embeddings": 256, "rms_norm_eps": eps, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [], "attention_bias": False,
              "hidden_act": "silu", "rope_scaling": None, "use_sliding_window": False, "sliding_window": None}
    ids, got, err, argmax = import_oracle(model, tensors, config, hf_dir, out, seed, "qwen3")
    ok = err <= TOL and argmax
    print(f"{'qwen3_moe (hooked oracle)':28s} max |logit diff| / scale = {err:.2e}  argmax equal: {argmax}  {'ok' if ok else 'FAIL'}")
    return ok


def check_deepseek(seed):
    """DeepSeekMoE's modeling code is not part of transformers (it ships with the checkpoint). Its oracle
    here is transformers' Qwen2-MoE arranged to compute it: biases zero, a dense first block
    (first_k_dense_replace = 1), and two shared experts as one of twice the width whose sigmoid gate is
    held at 1/2 (zero weights) with its down-projection doubled. Saved under DeepSeekMoE's names
    (mlp.shared_experts.*, no gate) with its config.json, imported, and compared."""
    torch.manual_seed(seed)
    w = 32
    cfg = transformers.Qwen2MoeConfig(vocab_size=300, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=4, max_position_embeddings=256, rms_norm_eps=1e-6,
                                      rope_theta=10000.0, tie_word_embeddings=False, intermediate_size=96,
                                      moe_intermediate_size=w, num_experts=6, num_experts_per_tok=2,
                                      shared_expert_intermediate_size=2 * w, norm_topk_prob=False, mlp_only_layers=[0])
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias") or name.endswith("shared_expert_gate.weight"):
                p.zero_()
            elif p.dim() >= 2:
                p.copy_(0.08 * torch.randn_like(p))
    tensors = {}
    for n, t in model.state_dict().items():
        if n.endswith(".bias") or "shared_expert_gate" in n or "rotary_emb" in n:
            continue
        saved = t.clone().contiguous()
        if "shared_expert." in n:
            if n.endswith("down_proj.weight"):
                with torch.no_grad():  # the oracle's doubled down-projection: sigmoid(0) = 1/2 in front of it
                    dict(model.named_parameters())[n].mul_(2.0)
            n = n.replace("shared_expert.", "shared_experts.")
        tensors[n] = saved
    hf_dir = os.path.join(WORK, f"hf-deepseek-{seed}")
    out = os.path.join(WORK, f"run-deepseek-{seed}")
    for d in (hf_dir, out):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(hf_dir)
    config = {"architectures": ["DeepseekForCausalLM"], "model_type": "deepseek", "vocab_size": 300, "hidden_size": 64,
              "intermediate_size": 96, "moe_intermediate_size": w, "n_routed_experts": 6, "n_shared_experts": 2,
              "num_experts_per_tok": 2, "first_k_dense_replace": 1, "moe_layer_freq": 1, "norm_topk_prob": False,
              "scoring_func": "softmax", "aux_loss_alpha": 0.001, "seq_aux": True, "num_hidden_layers": 3,
              "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
              "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu", "rope_scaling": None,
              "attention_bias": False}
    ids, got, err, argmax = import_oracle(model, tensors, config, hf_dir, out, seed, "deepseek")
    # Exported again (DeepSeekMoE's own names and config), imported again: the same logits, bit for bit.
    again_hf, again = os.path.join(WORK, f"export-deepseek-{seed}"), os.path.join(WORK, f"reimport-deepseek-{seed}")
    for d in (again_hf, again):
        shutil.rmtree(d, ignore_errors=True)
    run("export", "--ckpt", out, "--out", again_hf)
    assert json.load(open(os.path.join(again_hf, "config.json")))["model_type"] == "deepseek"
    run("import", again_hf, "--out", again)
    same = bool(torch.equal(logits_of_moe(again, ids, f"deepseek-again-{seed}"), got))
    ok = err <= TOL and argmax and same
    print(f"{'deepseek (DeepSeekMoE oracle)':28s} max |logit diff| / scale = {err:.2e}  argmax equal: {argmax}  "
          f"export → import bit-identical: {same}  {'ok' if ok else 'FAIL'}")
    return ok


def logits_of_moe(out, ids, name):
    ids_path = os.path.join(WORK, f"ids-{name}.txt")
    with open(ids_path, "w") as f:
        for row in ids.tolist():
            f.write(" ".join(map(str, row)) + "\n")
    npy = os.path.join(WORK, f"logits-{name}.npy")
    run("logits", "--ckpt", out, "--ids", ids_path, "--out", npy, "--threads", "1")
    return torch.from_numpy(np.load(npy)).double()


def check_export(run_dir, name, dtype="f32", want_class=None):
    """`moe export` of a run: transformers loads it (as want_class) and computes the logits moe does."""
    hf_dir = os.path.join(WORK, f"export-{name}")
    shutil.rmtree(hf_dir, ignore_errors=True)
    run("export", "--ckpt", run_dir, "--format", "hf", "--dtype", dtype, "--out", hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    cls = type(model).__name__
    ids = torch.randint(0, model.config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = model(ids).logits.double()
    if dtype != "f32":  # the rounded weights, imported back, against transformers' reading of them
        again = os.path.join(WORK, f"reimport-{name}")
        shutil.rmtree(again, ignore_errors=True)
        run("import", hf_dir, "--out", again)
        run_dir = again
    got = logits_of_moe(run_dir, ids, name)
    tol = TOL
    err, _ = logits_diff(got, want)
    ok = err <= tol and (want_class is None or cls == want_class)
    print(f"export {name:21s} loaded as {cls}: max |logit diff| / scale = {err:.2e}  {'ok' if ok else 'FAIL'}")
    return ok


TINY = ["model.vocab_size=320", "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
        "model.intermediate_size=64", "model.max_position_embeddings=16", "model.moe_intermediate_size=32",
        "model.num_local_experts=4", "train.batch_size=4", "train.eval_every=5", "train.eval_windows=4",
        "train.warmup_steps=2", "train.steps=6"]


def trained_here(name, extra):
    """A tiny model trained by `moe train` for a few steps on generated text."""
    corpus = os.path.join(WORK, "corpus.txt")
    if not os.path.exists(corpus):
        g = torch.Generator().manual_seed(3)
        words = ["the", "expert", "router", "token", "loss", "gate", "layer", "of", "and", "mixture", "balance", "{", "}"]
        with open(corpus, "w") as f:
            for _ in range(3000):
                n = int(torch.randint(4, 12, (1,), generator=g))
                f.write(" ".join(words[int(i)] for i in torch.randint(0, len(words), (n,), generator=g)) + "\n")
    out = os.path.join(WORK, f"trained-{name}")
    shutil.rmtree(out, ignore_errors=True)
    args = ["train", "--threads", "2"]
    for kv in TINY + extra + [f"train.corpus=file:{corpus}", f"train.data_dir={WORK}/data", f"train.out={out}"]:
        args += ["--set", kv]
    run(*args)
    return out


def main():
    os.makedirs(WORK, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    cases = [("mixtral", 1, torch.float32, None), ("mixtral", 2, torch.bfloat16, "60KB"), ("mixtral_head_dim", 7, torch.float32, None),
             ("qwen2_moe", 3, torch.float32, None), ("qwen2_moe_norm", 4, torch.float16, "100KB"),
             ("olmoe", 5, torch.float32, None), ("granitemoe", 6, torch.float32, None)]
    results = [check(*c) for c in cases]
    results.append(check_qwen3(8))
    results.append(check_deepseek(9))
    # Imported, exported again, read by transformers.
    for arch, seed, cls in [("mixtral", 1, "MixtralForCausalLM"), ("qwen2_moe", 3, "Qwen2MoeForCausalLM"),
                            ("olmoe", 5, "OlmoeForCausalLM"), ("granitemoe", 6, "GraniteMoeForCausalLM")]:
        results.append(check_export(os.path.join(WORK, f"run-{arch}-{seed}"), f"{arch}-roundtrip", want_class=cls))
    # Trained here: the default Mixtral-style model, and a Qwen2-MoE-style one (top-k of the softmax, a
    # gated shared expert, a dense first block, q/k/v biases).
    mixtral = trained_here("mixtral", [])
    results.append(check_export(mixtral, "trained-mixtral", want_class="MixtralForCausalLM"))
    results.append(check_export(mixtral, "trained-mixtral-bf16", dtype="bf16", want_class="MixtralForCausalLM"))
    qwen = trained_here("qwen2", ["model.router=softmax_topk", "model.norm_topk_prob=true", "model.n_shared_experts=1",
                                  "model.shared_expert_gate=true", "model.first_k_dense_replace=1",
                                  "model.attention_bias=true"])
    results.append(check_export(qwen, "trained-qwen2", want_class="Qwen2MoeForCausalLM"))
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
