#!/usr/bin/env python3
"""Lifelong learning end to end through `moe` (docs/MECHANISMS.md §6):

  expand-resume  train a tiny MoE, `moe expand` it, and train the expanded checkpoint with
                 `--init-from`: the frozen rows and their AdamW moments come out bit-identical while
                 the new rows move; 10 steps equal 5 + resume 5 byte for byte; `inspect` shows the
                 frozen and trainable counts; `--distill-from` logs the distillation term.
  bad-input      expanding a dense or PEER checkpoint, N <= 0, an OUT holding a run, a phases file
                 naming an unknown corpus, --distill-from a model with another vocabulary: each one
                 line, exit 1, nothing written (over).
  phases         `moe lifelong` over two corpora with all four strategies: the forgetting matrices
                 (JSON, markdown, SVG); killed with SIGKILL during its third run and restarted, it
                 ends with the same results as an uninterrupted one, and a third call trains nothing.

    lifelong_cli.py MOE_BINARY expand-resume | bad-input | phases
"""
import json
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from cli_helpers import MOE, one_line_error, run, tensors
TINY = ["model.vocab_size=320", "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
        "model.intermediate_size=64", "model.max_position_embeddings=16", "model.moe_intermediate_size=32",
        "model.num_local_experts=4", "train.batch_size=4", "train.eval_every=5", "train.eval_windows=8",
        "train.warmup_steps=3"]


def text(words, lines, seed):
    rnd = random.Random(seed)
    return "".join(" ".join(rnd.choice(words) for _ in range(rnd.randint(4, 12))) + "\n" for _ in range(lines))


PROSE = ["the", "expert", "router", "token", "loss", "gate", "layer", "of", "and", "to", "mixture", "balance"]
CODE = ["int", "char", "void", "return", "struct", "if", "else", "for", "while", "{", "}", ";", "(", ")", "x", "0"]


def train(tmp, out, corpus, extra, model=True):
    """`moe train` of the tiny model (model=False: the model comes from train.init_from)."""
    args = ["train", "--threads", "2"]
    for s in [t for t in TINY if model or t.startswith("train.")] + [f"train.corpus=file:{corpus}", f"train.data_dir={tmp}/data", f"train.out={out}"] + extra:
        args += ["--set", s]
    return run(args)


def rows(t, r0, r1):
    shape, a = t
    w = len(a) // shape[0]
    return a[r0 * w:r1 * w].tobytes()


def newest(run_dir):
    return sorted(p for p in pathlib.Path(run_dir).iterdir() if p.name.startswith("step-") and p.name[5:].isdigit())[-1]


def expand_resume(tmp):
    (tmp / "a.txt").write_text(text(PROSE, 3000, 1))
    (tmp / "b.txt").write_text(text(PROSE[::-1] + ["shift"], 3000, 2))
    train(tmp, tmp / "base", tmp / "a.txt", ["train.steps=20"])
    out = run(["expand", "--ckpt", str(tmp / "base"), "--add-experts", "2", "--out", str(tmp / "grown"),
               "--entry-steps", "2"]).stdout
    assert "4 -> 6 routed experts" in out, out
    sizes = json.loads(run(["inspect", "--ckpt", str(tmp / "grown"), "--json"]).stdout)
    assert sizes["frozen_params"] > 0 and sizes["trainable_params"] > 0, sizes
    assert sizes["frozen_params"] + sizes["trainable_params"] == sizes["params"], sizes
    text_out = run(["inspect", "--ckpt", str(tmp / "grown")]).stdout
    assert "frozen" in text_out and "trainable" in text_out, text_out
    frozen = json.loads((newest(tmp / "grown") / "manifest.json").read_text())["frozen"]
    assert frozen["model.layers.0.mlp.experts.w1"] == [[0, 4]] and frozen["model.layers.1.mlp.router.weight"] == [[0, 4]], frozen
    common = ["train.steps=10", "train.save_every=5", "train.keep_checkpoints=0"]
    # 10 steps straight, and 5 + resume 5.
    r = train(tmp, tmp / "straight", tmp / "b.txt", common + ["train.init_from=" + str(tmp / "grown")], model=False)
    assert "frozen" in r.stdout, r.stdout
    run(["train", "--threads", "2", "--init-from", str(tmp / "grown"), "--distill-from", str(tmp / "base"), "--distill-weight",
         "0.5"] + sum((["--set", s] for s in TINY[-4:] + common + [f"train.corpus=file:{tmp}/b.txt", f"train.data_dir={tmp}/data",
                                                                 f"train.out={tmp}/distilled"]), []))
    metrics = [json.loads(l) for l in open(tmp / "distilled" / "metrics.jsonl")]
    # Step 0: the expanded model computes what its teacher does, so the KL is 0 (to rounding); then it
    # grows as the student moves.
    assert len(metrics) == 10 and abs(metrics[0]["distill"]) < 1e-6, metrics[0]
    assert all(m["distill"] > 1e-6 for m in metrics[1:]), [m["distill"] for m in metrics]
    train(tmp, tmp / "halves", tmp / "b.txt", common + ["train.init_from=" + str(tmp / "grown"), "train.stop_after=5"], model=False)
    run(["train", "--resume", "--threads", "2", "--set", f"train.out={tmp}/halves", "--set", "train.stop_after=0"])
    for f in ("model.safetensors", "optimizer.safetensors"):
        a = (tmp / "straight" / "step-00000010" / f).read_bytes()
        b = (tmp / "halves" / "step-00000010" / f).read_bytes()
        assert a == b, f"{f}: 10 steps differ from 5 + resume 5 after expand"
    # Frozen rows and their moments bit-identical to the expanded checkpoint; new rows moved.
    g_model, g_opt = tensors(newest(tmp / "grown") / "model.safetensors"), tensors(newest(tmp / "grown") / "optimizer.safetensors")
    t_model, t_opt = tensors(tmp / "straight" / "step-00000010" / "model.safetensors"), tensors(tmp / "straight" / "step-00000010" / "optimizer.safetensors")
    checked = 0
    for name, ranges in frozen.items():
        for r0, r1 in ranges:
            assert rows(g_model[name], r0, r1) == rows(t_model[name], r0, r1), f"{name} rows {r0}..{r1} moved"
            for m in (".exp_avg", ".exp_avg_sq"):
                assert rows(g_opt[name + m], r0, r1) == rows(t_opt[name + m], r0, r1), f"{name}{m} rows {r0}..{r1} changed"
                assert any(x != 0 for x in g_opt[name + m][1]), f"{name}{m} is all zero: nothing was kept"
            n = g_model[name][0][0]
            if r1 < n:
                assert rows(g_model[name], r1, n) != rows(t_model[name], r1, n), f"{name}: the new rows did not move"
            checked += 1
    assert checked >= 8, frozen
    q = "model.layers.0.self_attn.q_proj.weight"
    assert g_model[q][1] != t_model[q][1], "attention (trainable by default) did not move"
    print(f"expand-resume: {checked} frozen tensors and their moments bit-identical, new rows moved; "
          "10 steps == 5 + resume 5 byte for byte; distillation logged")


def snapshot(d):
    return {p.relative_to(d): p.read_bytes() for p in pathlib.Path(d).rglob("*") if p.is_file() and p.name != ".lock"}


def bad_input(tmp):
    (tmp / "a.txt").write_text(text(PROSE, 3000, 1))
    train(tmp, tmp / "moe", tmp / "a.txt", ["train.steps=2"])
    train(tmp, tmp / "dense", tmp / "a.txt", ["train.steps=2", "model.ffn=dense"])
    train(tmp, tmp / "peer", tmp / "a.txt", ["train.steps=2", "model.ffn=peer", "model.peer.n_keys=8", "model.peer.d_key=8",
                                             "model.peer.heads=2", "model.peer.top_k=2"])
    one_line_error(["expand", "--ckpt", str(tmp / "dense"), "--add-experts", "2", "--out", str(tmp / "o1")], 'model.ffn = "dense"')
    one_line_error(["expand", "--ckpt", str(tmp / "peer"), "--add-experts", "2", "--out", str(tmp / "o2")], 'model.ffn = "peer"')
    for n in ("0", "-2"):
        one_line_error(["expand", "--ckpt", str(tmp / "moe"), "--add-experts", n, "--out", str(tmp / "o3")], f"--add-experts = {n}")
    for o in ("o1", "o2", "o3"):
        assert not (tmp / o).exists(), f"a refused expand wrote {o}"
    before = snapshot(tmp / "dense")
    one_line_error(["expand", "--ckpt", str(tmp / "moe"), "--add-experts", "2", "--out", str(tmp / "dense")], "already holds a run")
    assert snapshot(tmp / "dense") == before, "a refused expand wrote over a run"
    (tmp / "phases.toml").write_text(f'config = "{tmp}/moe.toml"\ndense_config = "{tmp}/dense.toml"\nphases = ["kjv", "klingon"]\n')
    (tmp / "moe.toml").write_text("[model]\nvocab_size = 320\n")
    (tmp / "dense.toml").write_text('[model]\nvocab_size = 320\nffn = "dense"\n')
    one_line_error(["lifelong", str(tmp / "phases.toml"), "--out", str(tmp / "o4")], 'phase 1 names corpus "klingon"')
    assert not (tmp / "o4").exists(), "a refused phases file wrote its folder"
    # A teacher with another vocabulary.
    train(tmp, tmp / "other", tmp / "a.txt", ["train.steps=2", "model.vocab_size=300"])
    run(["expand", "--ckpt", str(tmp / "moe"), "--add-experts", "2", "--out", str(tmp / "grown")])
    args = ["train", "--init-from", str(tmp / "grown"), "--distill-from", str(tmp / "other"), "--set", "train.steps=2",
            "--set", f"train.corpus=file:{tmp}/a.txt", "--set", f"train.data_dir={tmp}/data", "--set", f"train.out={tmp}/o5"]
    one_line_error(args, "vocabulary of 300 tokens where this model has 320")
    assert not (tmp / "o5").exists(), "a refused distillation wrote its run folder"
    print("bad-input: every refusal is one line with exit 1 and writes nothing")


def phases(tmp):
    (tmp / "prose.txt").write_text(text(PROSE, 3000, 1))
    (tmp / "code.txt").write_text(text(CODE, 3000, 2))
    sets = "".join(f'"{s.split("=")[0]}" = {json.dumps(int(s.split("=")[1]) if s.split("=")[1].isdigit() else s.split("=")[1])}\n'
                   for s in TINY if s.startswith("train."))
    (tmp / "moe.toml").write_text("[model]\n" + "".join(f'{s.split("=")[0][6:]} = {s.split("=")[1]}\n' for s in TINY if s.startswith("model.")) +
                                  f'router_aux_loss_coef = 0.01\n[train]\ndata_dir = "{tmp}/data"\nbatch_size = 4\neval_windows = 8\nwarmup_steps = 3\n')
    (tmp / "dense.toml").write_text('[model]\nffn = "dense"\nvocab_size = 320\nhidden_size = 32\nnum_hidden_layers = 2\n'
                                    'num_attention_heads = 2\nintermediate_size = 64\nmax_position_embeddings = 16\n'
                                    f'[train]\ndata_dir = "{tmp}/data"\nbatch_size = 4\neval_windows = 8\nwarmup_steps = 3\n')
    (tmp / "phases.toml").write_text(f'config = "moe.toml"\ndense_config = "dense.toml"\nphases = ["file:{tmp}/prose.txt", "file:{tmp}/code.txt"]\n'
                                     'steps = 12\nadd_experts = 2\nentry_steps = 4\ntokenizer_mb = 1\neval_windows = 8\n')
    del sets
    run(["lifelong", str(tmp / "phases.toml"), "--out", str(tmp / "a"), "--threads", "2"])
    res = json.loads((tmp / "a" / "forgetting.json").read_text())
    assert set(res["strategies"]) == {"expand", "finetune", "dense-finetune", "expand-nodistill"}, res.keys()
    for s, r in res["strategies"].items():
        assert len(r["loss"]) == 2 and r["loss"][0][1] is None and all(isinstance(x, float) for x in r["loss"][1]), r
        assert abs(r["forgetting"][1][0] - (r["loss"][1][0] - r["loss"][0][0])) < 1e-9, r
        assert r["forgetting"][1][1] == 0.0, r
    # The MoE strategies share their first phase.
    first = {s: r["loss"][0][0] for s, r in res["strategies"].items() if s != "dense-finetune"}
    assert len(set(first.values())) == 1, first
    for f in ("forgetting.md", "forgetting.svg", "forgetting-lines.svg", "tokenizer.model"):
        assert (tmp / "a" / f).stat().st_size > 100, f
    svg = (tmp / "a" / "forgetting.svg").read_text()
    assert svg.startswith("<svg") and "expand-nodistill" in svg and "after" in svg
    # Killed during its third run, then restarted: the same results.
    p = subprocess.Popen([MOE, "lifelong", str(tmp / "phases.toml"), "--out", str(tmp / "b"), "--threads", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    t0 = time.time()
    for line in p.stdout:
        if "[3/" in line:
            break
        if time.time() - t0 > 300:
            break
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp / "b" / "forgetting.json").exists(), "the killed run finished before the kill"
    out = run(["lifelong", str(tmp / "phases.toml"), "--out", str(tmp / "b"), "--threads", "2"]).stdout
    assert "done before" in out, out
    res_b = json.loads((tmp / "b" / "forgetting.json").read_text())
    assert res_b == res, f"restarted results differ:\n{res}\n{res_b}"
    out = run(["lifelong", str(tmp / "phases.toml"), "--out", str(tmp / "b"), "--threads", "2"]).stdout
    assert out.count("done before") == 6 and "training" not in out.replace("training the joint", ""), out
    print("phases: four strategies over two corpora; killed and restarted, the same forgetting matrices")


def main():
    mode = sys.argv[2]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"moe_lifelong_{mode}_"))
    try:
        {"expand-resume": expand_resume, "bad-input": bad_input, "phases": phases}[mode](tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
