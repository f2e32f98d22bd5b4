#!/usr/bin/python3
"""Plots how evenly PEER layers use their experts, from `moe inspect --routing --json` outputs: for
each run, the share of the total gate held by the most used experts against the fraction of the N
experts they are (log scale). Uniform use is the diagonal; a curve far above it means few experts
carry most of the routing.

  build/bin/moe inspect --routing --ckpt runs/peer/peer-1024 --json > /tmp/a.json
  /usr/bin/python3 bench/plot_peer_usage.py /tmp/a.json:peer-1024 /tmp/b.json:no-BN --out docs/img/peer-usage.svg
"""
import argparse
import json
import math
import os

from plot_runs import COLORS, legend_line, svg_start, svg_write


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("inputs", nargs="+", help="FILE.json[:label]")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="PEER expert use on held-out text: cumulative gate share of the most used experts")
    a = ap.parse_args()
    W, H, ml, mr, mt, mb = 820, 440, 60, 250, 40, 50
    curves = []
    for item in a.inputs:
        path, _, label = item.partition(":")
        with open(path) as f:
            j = json.load(f)
        layer = j["layers"][0]
        n = layer["experts"]
        pts = [(r / n, s) for r, s in layer["cumulative_share"]]
        curves.append((label or os.path.basename(path), n, pts, layer))
    xmin = min(p[0][0] for _, _, p, _ in curves)
    X = lambda f: ml + (W - ml - mr) * (math.log10(f) - math.log10(xmin)) / -math.log10(xmin)
    Y = lambda s: mt + (H - mt - mb) * (1 - s)
    svg = svg_start(W, H, a.title)
    for i in range(6):
        s = i / 5
        svg.append(f'<line x1="{ml}" x2="{W - mr}" y1="{Y(s):.1f}" y2="{Y(s):.1f}" stroke="#ddd"/>')
        svg.append(f'<text x="{ml - 6}" y="{Y(s) + 4:.1f}" text-anchor="end">{100 * s:.0f}%</text>')
    e = 0
    while 10 ** -e >= xmin:
        f = 10 ** -e
        svg.append(f'<line x1="{X(f):.1f}" x2="{X(f):.1f}" y1="{mt}" y2="{H - mb}" stroke="#eee"/>')
        svg.append(f'<text x="{X(f):.1f}" y="{H - mb + 18}" text-anchor="middle">{100 * f:g}%</text>')
        e += 1
    svg.append(f'<text x="{(ml + W - mr) / 2}" y="{H - 10}" text-anchor="middle">most used experts, as a share of N (log scale)</text>')
    svg.append(f'<text x="16" y="{(mt + H - mb) / 2}" transform="rotate(-90 16 {(mt + H - mb) / 2})" text-anchor="middle">share of the total gate</text>')
    diag = " ".join(f"{X(10 ** (math.log10(xmin) * (1 - t / 50))):.1f},{Y(10 ** (math.log10(xmin) * (1 - t / 50))):.1f}" for t in range(51))
    svg.append(f'<polyline points="{diag}" fill="none" stroke="#999" stroke-dasharray="4 3"/>')
    for i, (label, n, pts, layer) in enumerate(curves):
        c = COLORS[i % len(COLORS)]
        svg.append(f'<polyline points="{" ".join(f"{X(f):.1f},{Y(s):.1f}" for f, s in pts)}" fill="none" stroke="{c}" stroke-width="2.5"/>')
        ly = mt + 20 + 36 * i
        svg += legend_line(W - mr + 12, ly, c, label)
        svg.append(f'<text x="{W - mr + 40}" y="{ly + 18}" fill="#555">usage {100 * layer["usage"]:.1f}%, unevenness {layer["unevenness"]:.2f}</text>')
    svg += legend_line(W - mr + 12, mt + 20 + 36 * len(curves), "#999", "uniform use", dash="4 3")
    svg_write(svg, a.out)


if __name__ == "__main__":
    main()
