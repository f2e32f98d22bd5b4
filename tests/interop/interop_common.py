"""What the interop scripts share (tests/interop/*_parity.py, scripts/compare_llama_cpp.py): random
weights for a tiny transformers model, llama.cpp without its extra buffer types, and the logits
comparison."""


def randomize(model):
    """Norms and biases away from their initial 1 and 0 (so a mix-up shows), matrices at std 0.08."""
    import torch
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif p.dim() >= 2:
                p.copy_(0.08 * torch.randn_like(p))


def llama_without_extra_buffers():
    """Makes llama-cpp-python load models without llama.cpp's extra buffer types (AMX, repacked weights):
    on Intel CPUs with AMX its batched Q8_0 matmul segfaults with them (llama.cpp issue 20824)."""
    import llama_cpp
    import llama_cpp.llama
    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p
    llama_cpp.llama.llama_cpp.llama_model_default_params = params


def logits_diff(got, want):
    """(max |got − want| / max |want|, argmax equal at every position) of two logit arrays (torch or NumPy)."""
    err = float(abs(got - want).max() / abs(want).max())
    return err, bool((got.argmax(-1) == want.argmax(-1)).all())
