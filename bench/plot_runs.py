#!/usr/bin/python3
"""Plots the loss curves of training runs (their metrics.jsonl) as one SVG: training cross-entropy
(thin, smoothed) and validation loss (thick, with points) against tokens seen.

  /usr/bin/python3 bench/plot_runs.py runs/dense-tiny runs/mixtral-tiny --out docs/img/kjv-loss.svg
"""
import argparse
import json
import os

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def load(run):
    steps, ce, val = [], [], []
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            steps.append(j["step"] + 1)
            ce.append(j["ce"])
            if "val_loss" in j:
                val.append((j["step"] + 1, j["val_loss"]))
    with open(os.path.join(run, "config.json")) as f:
        cfg = json.load(f)
    tokens = cfg["train"]["batch_size"] * cfg["model"]["max_position_embeddings"] * cfg["train"]["grad_accum"]
    return steps, ce, val, tokens


def svg_start(W, H, title):
    """The opening of a white W×H SVG figure with a centred title."""
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
            f'<rect width="{W}" height="{H}" fill="white"/>',
            f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>']


def legend_line(x, y, color, label, dash=""):
    """A legend entry: a short line in the curve's style, then its label."""
    style = f' stroke-dasharray="{dash}"' if dash else ' stroke-width="2.5"'
    return [f'<line x1="{x}" x2="{x + 22}" y1="{y}" y2="{y}" stroke="{color}"{style}/>',
            f'<text x="{x + 28}" y="{y + 4}">{label}</text>']


def svg_write(svg, out):
    """Closes the figure and writes it to out (creating its folder), printing the path."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(svg + ["</svg>"]) + "\n")
    print(out)


def smooth(v, k=20):
    out, acc = [], []
    for x in v:
        acc.append(x)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="Loss on the KJV Bible (validation: thick; training, smoothed: thin)")
    ap.add_argument("--ymax", type=float, default=0.0)
    a = ap.parse_args()
    data = [(os.path.basename(r.rstrip("/")), *load(r)) for r in a.runs]
    W, H, ml, mr, mt, mb = 820, 440, 60, 230, 40, 50
    xmax = max(s[-1] * t for _, s, _, _, t in data)
    vals = [v for _, _, ce, val, _ in data for v in smooth(ce)[len(ce) // 10:]] + [v for _, _, _, val, _ in data for _, v in val]
    ymin = min(vals) - 0.05
    ymax = a.ymax or max(vals) + 0.05
    X = lambda x: ml + (W - ml - mr) * x / xmax
    Y = lambda y: mt + (H - mt - mb) * (1 - (min(y, ymax) - ymin) / (ymax - ymin))
    svg = svg_start(W, H, a.title)
    for i in range(6):  # grid
        y = ymin + (ymax - ymin) * i / 5
        svg.append(f'<line x1="{ml}" x2="{W - mr}" y1="{Y(y):.1f}" y2="{Y(y):.1f}" stroke="#ddd"/>')
        svg.append(f'<text x="{ml - 6}" y="{Y(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
        x = xmax * i / 5
        svg.append(f'<text x="{X(x):.1f}" y="{H - mb + 18}" text-anchor="middle">{x / 1e6:.1f}M</text>')
    svg.append(f'<text x="{(ml + W - mr) / 2}" y="{H - 10}" text-anchor="middle">tokens</text>')
    svg.append(f'<text x="16" y="{(mt + H - mb) / 2}" transform="rotate(-90 16 {(mt + H - mb) / 2})" text-anchor="middle">loss (nats/token)</text>')
    for i, (name, steps, ce, val, tok) in enumerate(data):
        c = COLORS[i % len(COLORS)]
        sm = smooth(ce)
        pts = " ".join(f"{X(s * tok):.1f},{Y(v):.1f}" for s, v in zip(steps, sm))
        svg.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="1" opacity="0.6"/>')
        if val:
            pts = " ".join(f"{X(s * tok):.1f},{Y(v):.1f}" for s, v in val)
            svg.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2.5"/>')
            for s, v in val:
                svg.append(f'<circle cx="{X(s * tok):.1f}" cy="{Y(v):.1f}" r="3" fill="{c}"/>')
        last = f" {val[-1][1]:.3f}" if val else ""
        svg += legend_line(W - mr + 12, mt + 20 + 22 * i, c, f"{name}{last}")
    svg_write(svg, a.out)


if __name__ == "__main__":
    main()
