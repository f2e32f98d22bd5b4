#!/usr/bin/env python3
"""The lab's commands end to end (docs/RELIABILITY.md): a sweep killed with SIGKILL and restarted
finishes without retraining its finished points and gives the same table as an uninterrupted sweep;
the report page renders in headless Chromium with its charts drawn (read from a screenshot); bad
sweep files, results tables and report folders are one-line errors that write nothing; a corpus
preparation killed between chunks resumes to the same shards as an uninterrupted one.

    lab_cli.py MOE_BINARY sweep-resume | report-render | bad-input | data-resume
"""
import hashlib
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from cli_helpers import MOE, one_line_error, run

TIMING = {"wall_clock_s", "tokens_per_s"}  # measured, not computed: they differ between any two runs


def text(lines, seed=1):
    rnd = random.Random(seed)
    words = ["the", "expert", "router", "token", "loss", "gate", "layer", "of", "and", "to", "mixture", "sparse",
             "dense", "law", "scale", "granular", "shared", "balance", "load", "capacity"]
    return "".join(" ".join(rnd.choice(words) for _ in range(rnd.randint(4, 12))) + "\n" for _ in range(lines))


def sweep_file(tmp, steps, experts, extra_grid=""):
    return f"""
[set]
"train.corpus" = "file:{tmp}/text.txt"
"train.data_dir" = "{tmp}/data"
"train.steps" = {steps}
"train.save_every" = 20
"train.eval_every" = 20
"train.eval_windows" = 4
"train.batch_size" = 4
"train.warmup_steps" = 5
"model.vocab_size" = 320
"model.hidden_size" = 32
"model.num_hidden_layers" = 2
"model.num_attention_heads" = 2
"model.intermediate_size" = 64
"model.moe_intermediate_size" = 64
"model.max_position_embeddings" = 32
"model.num_experts_per_tok" = 1
"model.router" = "softmax_topk"
[grid]
"model.num_local_experts" = {experts}
{extra_grid}"""


def rows(path):
    return [json.loads(l) for l in open(path)]


def setup(tmp, steps, experts, extra_grid=""):
    (tmp / "text.txt").write_text(text(3000))
    (tmp / "s.toml").write_text(sweep_file(tmp, steps, experts, extra_grid))


def sweep_resume(tmp):
    setup(tmp, 300, "[2, 4, 8]")
    run(["sweep", str(tmp / "s.toml"), "--out", str(tmp / "a"), "--threads", "2"])
    names = [r["name"] for r in rows(tmp / "a" / "results.jsonl")]
    assert len(names) == 3, names
    # The same sweep, killed (SIGKILL) while its second point trains, after that point's first checkpoint.
    p = subprocess.Popen([MOE, "sweep", str(tmp / "s.toml"), "--out", str(tmp / "b"), "--threads", "2"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = tmp / "b" / "points" / names[1]
    t0 = time.time()
    while not (second.exists() and any(d.name.startswith("step-") and d.name[5:].isdigit() for d in second.iterdir())):
        if p.poll() is not None or time.time() - t0 > 120:
            sys.exit("FAIL: the sweep ended or stalled before its second point wrote a checkpoint")
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    first = tmp / "b" / "points" / names[0] / "metrics.jsonl"
    before = (first.stat().st_mtime_ns, hashlib.sha256(first.read_bytes()).hexdigest())
    assert not (tmp / "b" / "points" / names[2]).exists(), "the third point started before the kill"
    time.sleep(0.5)  # the killed sweep's trainer dies with it (PR_SET_PDEATHSIG): its folder lock is free
    out = run(["sweep", str(tmp / "s.toml"), "--out", str(tmp / "b"), "--threads", "2"]).stdout
    assert "3 points in" in out and ": 1 finished, 2 to train" in out, out
    after = (first.stat().st_mtime_ns, hashlib.sha256(first.read_bytes()).hexdigest())
    assert before == after, "the finished first point was trained again"
    log = (tmp / "b" / "points" / (names[1] + ".log")).read_text()
    assert "resumed" in log, log[-2000:]
    a, b = rows(tmp / "a" / "results.jsonl"), rows(tmp / "b" / "results.jsonl")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING} for r in rs]
    assert strip(a) == strip(b), f"tables differ:\n{strip(a)}\n{strip(b)}"
    assert (tmp / "a" / "results.csv").read_text().splitlines()[0] == (tmp / "b" / "results.csv").read_text().splitlines()[0]
    # Every column the issue names is in the table.
    for col in ("model.num_local_experts", "params", "active_params", "non_embedding_params", "flops_per_token",
                "train_flops", "tokens", "wall_clock_s", "tokens_per_s", "val_loss", "max_mean", "cv", "dropped"):
        assert col in a[0], col
    # A third run trains nothing.
    out = run(["sweep", str(tmp / "s.toml"), "--out", str(tmp / "b")]).stdout
    assert ": 3 finished, 0 to train" in out, out
    print("sweep-resume: killed and restarted sweep matches the uninterrupted one;", len(a), "points")


def colour_pixels(png, rgb, tol=12):
    from PIL import Image
    im = Image.open(png).convert("RGB")
    n = 0
    for px in im.getdata():
        if all(abs(px[i] - rgb[i]) <= tol for i in range(3)):
            n += 1
    return n, im.size


def report_render(tmp):
    setup(tmp, 60, "[1, 4, 16, 64]", '"model.hidden_size" = [32, 48]\n')  # two sizes: Clark's law needs both
    run(["sweep", str(tmp / "s.toml"), "--out", str(tmp / "s"), "--threads", "2"])
    html = tmp / "page.html"
    out = run(["report", str(tmp / "s"), "--out", str(html), "--windows", "4"]).stdout
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>"), page[:100]
    for bad in ("<script", "http://", "https://", "<link", "<img", "@import", "url("):
        if bad in page and not (bad == "http://" and page.count(bad) == page.count('xmlns="http://www.w3.org/2000/svg"')):
            sys.exit(f"FAIL: the page is not self-contained: it holds {bad!r}")
    assert page.count("<svg") >= 8, page.count("<svg")
    assert "Clark et al. 2022 fit" in page, "no Clark fit drawn through the 8 points"
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chrome:
        sys.exit("FAIL: chromium is not installed (scripts/setup.sh installs it)")
    png = tmp / "page.png"
    r = subprocess.run([chrome, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--hide-scrollbars", "--window-size=1280,2600", f"--screenshot={png}", f"file://{html}"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp)})
    if not png.exists():
        sys.exit(f"FAIL: chromium wrote no screenshot (exit {r.returncode}): {r.stderr[-2000:]}")
    # The charts are drawn: the palette's first two series colours cover real areas (lines and markers),
    # and the heatmaps' blue-to-red ramp shows.
    blue, size = colour_pixels(png, (0x44, 0x77, 0xAA))
    red, _ = colour_pixels(png, (0xEE, 0x66, 0x77))
    dark, _ = colour_pixels(png, (0xAA, 0x33, 0x33), tol=30)
    assert size == (1280, 2600), size
    assert blue > 2000 and red > 300 and dark > 200, f"charts not drawn: blue {blue}, red {red}, dark red {dark} pixels"
    print(f"report-render: {out.strip()}; screenshot {size[0]}x{size[1]}: {blue} blue, {red} red, {dark} heatmap pixels")


def bad_input(tmp):
    (tmp / "unknown.toml").write_text('[grid]\n"model.num_local_expert" = [2, 4]\n')
    one_line_error(["sweep", str(tmp / "unknown.toml"), "--out", str(tmp / "o1")], "did you mean model.num_local_experts")
    (tmp / "empty.toml").write_text('[grid]\n"model.num_local_experts" = []\n')
    one_line_error(["sweep", str(tmp / "empty.toml"), "--out", str(tmp / "o2")], "the grid is empty")
    assert not (tmp / "o1").exists() and not (tmp / "o2").exists(), "a refused sweep wrote its folder"
    (tmp / "missing.csv").write_text("name,active_params,val_loss\na,1000,4.0\n")
    one_line_error(["fit", str(tmp / "missing.csv"), "--law", "clark"], 'column "experts" is missing')
    (tmp / "few.csv").write_text("active_params,experts,val_loss\n" + "".join(f"{1000 * (i + 1)},{2 ** i},{4 - 0.1 * i}\n" for i in range(4)))
    one_line_error(["fit", str(tmp / "few.csv"), "--law", "clark"], "needs at least 7 points; the table has 4")
    (tmp / "nan.csv").write_text("active_params,experts,val_loss\n1000,1,x\n")
    one_line_error(["fit", str(tmp / "nan.csv"), "--law", "clark"], 'column val_loss holds "x"')
    (tmp / "empty_dir").mkdir()
    (tmp / "keep.html").write_text("old page")
    one_line_error(["report", str(tmp / "empty_dir"), "--out", str(tmp / "keep.html")], "holds no run")
    assert (tmp / "keep.html").read_text() == "old page", "a refused report wrote over its --out"
    # --json: the fields the issue names, from points the Clark law generates.
    a, b, c, d, es, em = -0.082, -0.108, 0.009, 1.104, 1.847, 314.478
    import math
    lines = ["active_params,experts,val_loss"]
    for n in (1.5e7, 5.5e7, 1.3e8, 3.7e8, 1.3e9):
        for e in (1, 2, 4, 8, 16, 32, 64, 128):
            eh = 1 / (1 / (e - 1 + 1 / (1 / es - 1 / em)) + 1 / em)
            ln, le = math.log10(n), math.log10(eh)
            lines.append(f"{n:.0f},{e},{10 ** (a * ln + b * le + c * ln * le + d):.6f}")
    (tmp / "clark.csv").write_text("\n".join(lines) + "\n")
    j = json.loads(run(["fit", str(tmp / "clark.csv"), "--law", "clark", "--json", "--bootstrap", "20"]).stdout)
    assert j["law"] == "clark" and j["points"] == 40, j
    assert set(j["coefficients"]) == {"a", "b", "c", "d", "E_start", "E_max"} == set(j["intervals"]), j
    assert abs(j["coefficients"]["a"] - a) < 0.1 * abs(a) and abs(j["coefficients"]["b"] - b) < 0.1 * abs(b), j
    assert j["rmse"] < 1e-3, j
    print("bad-input: every refusal is one line with exit 1 and writes nothing; fit --json as documented")


def data_resume(tmp):
    # 18 MB: above the 16 MB that is encoded whole, so it goes in ~4 MB chunks.
    big = tmp / "big.txt"
    chunk = text(20000, seed=3)
    big.write_text(chunk * (18_000_000 // len(chunk) + 1))
    args = ["data", "--corpus", f"file:{big}", "--vocab-size", "320", "--threads", "2"]
    run(args + ["--out", str(tmp / "clean")])
    killed = run(args + ["--out", str(tmp / "resumed")], check=False, env={**os.environ, "MOE_FAULT": "kill-after:train-00001.bin"})
    assert killed.returncode == -signal.SIGKILL, f"the fault did not fire: exit {killed.returncode}"
    folder = next((tmp / "resumed").iterdir())
    assert not (folder / "meta.json").exists() and (folder / "chunks").is_dir()
    out = run(args + ["--out", str(tmp / "resumed")]).stdout
    assert "resuming a preparation that was stopped" in out and "chunks already encoded" in out, out
    clean = next((tmp / "clean").iterdir())
    for f in ("train.bin", "val.bin", "train.txt", "val.txt"):
        assert (clean / f).read_bytes() == (folder / f).read_bytes(), f"{f} differs after the resume"
    assert not (folder / "chunks").exists() and not (folder / "prepare.json").exists()
    print("data-resume: a preparation killed after a chunk resumed to the same shards")


def main():
    mode = sys.argv[2]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"moe_lab_{mode}_"))
    try:
        {"sweep-resume": sweep_resume, "report-render": report_render, "bad-input": bad_input, "data-resume": data_resume}[mode](tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
