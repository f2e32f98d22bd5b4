#!/usr/bin/env python3
"""Chat templates (src/data/chat_template.cpp) against transformers' apply_chat_template (docs/INTEROP.md):
the templates of Mixtral-8x7B-Instruct, Qwen1.5-MoE-A2.7B-Chat and OLMoE-1B-7B-Instruct, and one that
uses the rest of the supported subset (set, elif, filters, tests, string methods, loop variables,
comments, '-' whitespace control, lstrip/trim_blocks on indented blocks), rendered for several
conversations with and without the generation prompt: `moe tokenize --chat --render` must print the
text transformers renders, and `moe tokenize --chat` the ids it tokenizes; a template that raises
(Mixtral given a system message) must fail in both, with the template's message. Then `moe generate --chat`
on an imported Qwen2-MoE must print the text of transformers' greedy decoding of the same rendered
conversation, to 24 tokens and stopping at the EOS token.

    VENV/bin/python tests/interop/chat_parity.py BUILD/bin/moe WORKDIR
"""
import json
import os
import subprocess
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

MOE, WORK = sys.argv[1], sys.argv[2]
MIXTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
           "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are "
           "supported!') }}{% endif %}{% endfor %}")
QWEN = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a "
        "helpful assistant<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']}}{% if "
        "(loop.last and add_generation_prompt) or not loop.last %}{{ '<|im_end|>' + '\\n'}}{% endif %}{% endfor %}{% if "
        "add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
OLMOE = """{{ bos_token }}{% for message in messages %}
{% if message['role'] == 'system' %}
{{ '<|system|>\\n' + message['content'] }}
{% elif message['role'] == 'user' %}
{{ '<|user|>\\n' + message['content'] }}
{% elif message['role'] == 'assistant' %}
{% if not loop.last %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
{% else %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
{% endif %}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>\\n' }}
{% endif %}
{% endfor %}"""
SUBSET = """{#- a comment -#}
{%- set sys = messages[0]['content'] if false else none -%}
{%- set greeting = 'Hi' ~ ' ' ~ messages|length ~ ' messages' %}
{{- bos_token }}{{ greeting|upper }}
  {% for m in messages %}
    {% if m.role == 'system' and m.content is defined %}
[SYS {{ loop.index }}/{{ loop.length }}] {{ m.content|trim }}
    {%- elif m.role in ['user', 'human'] %}
[USER{{ '*' if loop.first }}] {{ m.content.strip() }}{% if m.content.endswith('?') %} (q){% endif %}
    {% else %}
[{{ m.role|lower }}] {{ m.content }}{{ eos_token if not loop.last }}
    {% endif %}
  {% endfor %}
{%- if add_generation_prompt is defined and add_generation_prompt %}[ASSISTANT]{% endif %}"""
CHATS = [
    [{"role": "user", "content": "What is a mixture of experts?"}],
    [{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "Route 12 tokens to 2 of 8 experts?"}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! 你好 🙂"},
     {"role": "user", "content": " line one\nline two "}],
]


def tokenizer_json(path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([c["content"] for chat in CHATS for c in chat] * 20 + ["[INST] [/INST] <|user|> system"] * 20,
                            trainer)
    tok.save(path)


def moe(*args):
    return subprocess.run([MOE, "tokenize", *args], capture_output=True)


def generate_with_chat(work):
    """`moe generate --chat` on an imported Qwen2-MoE with Qwen's template against transformers: the same
    greedy continuation of the same rendered prompt, stopped at the same EOS token."""
    import shutil

    import torch
    import transformers
    hf_dir, run = os.path.join(work, "chat-hf-qwen2"), os.path.join(work, "chat-run-qwen2")
    for d in (hf_dir, run):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(hf_dir)
    tokenizer_json(os.path.join(hf_dir, "tokenizer.json"))
    V = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json")).get_vocab_size()
    cfg = transformers.Qwen2MoeConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, moe_intermediate_size=32, num_experts=4,
                                      num_experts_per_tok=2, shared_expert_intermediate_size=32, max_position_embeddings=256,
                                      tie_word_embeddings=False)
    torch.manual_seed(5)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(0.3 * torch.randn_like(p))
    model.save_pretrained(hf_dir, safe_serialization=True)
    with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": QWEN, "eos_token": "<|im_end|>", "bos_token": None}, f)
    r = subprocess.run([MOE, "import", hf_dir, "--out", run], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(hf_dir, "tokenizer.json"), eos_token="<|im_end|>")
    tok.chat_template = QWEN
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is an expert?"}]
    ids = tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    new = []  # greedy decoding by hand (transformers' generate() imports FSDP, which Debian's torch 1.13 cannot on 3.11)
    with torch.no_grad():
        while len(new) < 24:
            new.append(int(model(torch.tensor([ids + new])).logits[0, -1].argmax()))
            if new[-1] == eos:
                break
    # The stop: the EOS of tokenizer_config.json becomes the 6th token greedy decoding makes (one not made
    # before it), so that both must stop right after it.
    k = next(i for i in range(5, len(new)) if new[i] not in new[:i])
    results = []
    for label, want_ids, eos_piece in [("to 24 tokens", new, "<|im_end|>"),
                                       (f"stopping at its EOS (token {k + 1})", new[:k + 1], tok.convert_ids_to_tokens(new[k]))]:
        with open(os.path.join(run, "hf", "tokenizer_config.json"), "w") as f:
            json.dump({"chat_template": QWEN, "eos_token": eos_piece, "bos_token": None}, f)
        want = tok.decode(want_ids, skip_special_tokens=False)
        r = subprocess.run([MOE, "generate", "--ckpt", run, "--chat", "--system", "Be brief.", "--prompt", "What is an expert?",
                            "--temperature", "0", "--max-tokens", "24"], capture_output=True)
        got = r.stdout.decode("utf-8", errors="replace")[:-1]  # less the newline moe ends with
        ok = r.returncode == 0 and got == want
        print(f"generate --chat {label}: the same text as transformers' greedy decoding: {got == want}  {'ok' if ok else 'FAIL'}"
              + ("" if ok else f"\n  want {want!r}\n  got  {got!r}\n  {r.stderr.decode()}"))
        results.append(ok)
    return all(results)


def main():
    results = []
    for name, tmpl in [("mixtral", MIXTRAL), ("qwen", QWEN), ("olmoe", OLMOE), ("subset", SUBSET)]:
        run = os.path.join(WORK, f"chat-{name}")
        os.makedirs(os.path.join(run, "hf"), exist_ok=True)
        tokenizer_json(os.path.join(run, "hf", "tokenizer.json"))
        with open(os.path.join(run, "hf", "tokenizer_config.json"), "w") as f:
            json.dump({"chat_template": tmpl, "bos_token": "<s>", "eos_token": {"content": "</s>"}}, f)
        hf = PreTrainedTokenizerFast(tokenizer_file=os.path.join(run, "hf", "tokenizer.json"), bos_token="<s>", eos_token="</s>")
        hf.chat_template = tmpl
        for ci, chat in enumerate(CHATS):
            for gen in (True, False):
                path = os.path.join(WORK, f"chat-{name}-{ci}-{int(gen)}.json")
                with open(path, "w") as f:
                    json.dump(chat, f)
                flags = [] if gen else ["--no-generation-prompt"]
                try:
                    want = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
                    want_ids = hf.apply_chat_template(chat, tokenize=True, add_generation_prompt=gen)
                except Exception as e:  # the template raised: moe must refuse with the same message
                    r = moe("--ckpt", run, "--chat", path, "--render", *flags)
                    ok = r.returncode != 0 and str(e) in r.stderr.decode()
                    print(f"{name} chat {ci} gen={gen}: raises {str(e)!r}: moe {'too' if ok else 'DIFFERS'}")
                    results.append(ok)
                    continue
                r = moe("--ckpt", run, "--chat", path, "--render", *flags)
                got = r.stdout.decode("utf-8")
                ids = [int(x) for x in moe("--ckpt", run, "--chat", path, *flags).stdout.split()]
                ok = r.returncode == 0 and got == want and ids == want_ids
                if not ok:
                    print(f"{name} chat {ci} gen={gen}: text equal {got == want}, ids equal {ids == want_ids}\n"
                          f"  want {want!r}\n  got  {got!r}\n  {r.stderr.decode()}")
                results.append(ok)
        print(f"{name}: {sum(results[-2 * len(CHATS):])}/{2 * len(CHATS)} renderings equal to transformers'")
    results.append(generate_with_chat(WORK))
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
