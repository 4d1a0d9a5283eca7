#!/usr/bin/env python3
"""Latency vs offered rate, as an SVG, from `chat-bench sweep --json` reports.

    chat-bench sweep --rates 1000,2000,… --json > embedded.json
    chat-bench/scripts/plot.py -o docs/img/latency-vs-rate.svg \
        "embedded=embedded.json" "distributed=distributed.json" [--limit-ms 50]

One line per report and percentile (p50 dashed, p99 solid), log-scaled latency axis, the
p99 limit as a horizontal rule. No dependencies beyond the standard library, so it runs
anywhere the benchmarks run.
"""
import argparse
import json
import math
import sys

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def load(spec):
    label, _, path = spec.partition("=")
    if not path:
        label, path = path or label, label
    with open(path) as f:
        rep = json.load(f)
    steps = rep["steps"] if "steps" in rep else [rep]
    pts = []
    for s in steps:
        d = s["delivery"]
        pts.append((s["target_rate"], d["p50_us"] / 1000.0, d["p99_us"] / 1000.0,
                    s.get("deliveries_per_s", 0.0)))
    return label, sorted(pts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", help="label=path.json (chat-bench --json output)")
    ap.add_argument("-o", "--out", required=True, help="SVG file to write")
    ap.add_argument("--limit-ms", type=float, default=50.0)
    ap.add_argument("--title", default="Delivery latency vs offered rate")
    a = ap.parse_args()
    series = [load(r) for r in a.reports]
    rates = [p[0] for _, pts in series for p in pts]
    lats = [v for _, pts in series for p in pts for v in (p[1], p[2]) if v > 0] + [a.limit_ms]
    if not rates:
        sys.exit("no data points")
    W, H, L, R, T, B = 760, 440, 70, 170, 40, 50
    x0, x1 = 0.0, max(rates) * 1.05
    y0 = 10 ** math.floor(math.log10(max(min(lats), 0.1)))
    y1 = 10 ** math.ceil(math.log10(max(lats)))
    def X(r):
        return L + (r - x0) / (x1 - x0) * (W - L - R)
    def Y(ms):
        ms = max(ms, y0)
        return T + (1 - (math.log10(ms) - math.log10(y0)) / (math.log10(y1) - math.log10(y0))) * (H - T - B)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="22" font-size="15">{a.title}</text>']
    # axes and grid
    d = y0
    while d <= y1 * 1.0001:
        y = Y(d)
        out.append(f'<line x1="{L}" x2="{W-R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L-6}" y="{y+4:.1f}" text-anchor="end">{d:g} ms</text>')
        d *= 10
    step = 10 ** math.floor(math.log10(x1 / 2))
    t = 0.0
    while t <= x1:
        x = X(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{T}" y2="{H-B}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{H-B+16}" text-anchor="middle">{t:,.0f}</text>')
        t += step
    out.append(f'<text x="{(L+W-R)/2}" y="{H-10}" text-anchor="middle">offered rate (msg/s)</text>')
    out.append(f'<line x1="{L}" x2="{W-R}" y1="{Y(a.limit_ms):.1f}" y2="{Y(a.limit_ms):.1f}" stroke="#888" stroke-dasharray="2,3"/>')
    out.append(f'<text x="{W-R+4}" y="{Y(a.limit_ms)+4:.1f}" fill="#666">p99 limit {a.limit_ms:g} ms</text>')
    ly = T + 10
    for i, (label, pts) in enumerate(series):
        c = COLORS[i % len(COLORS)]
        for idx, dash, name in ((2, "", "p99"), (1, ' stroke-dasharray="6,4"', "p50")):
            path = " ".join(f"{X(p[0]):.1f},{Y(p[idx]):.1f}" for p in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"{dash}/>')
            for p in pts:
                out.append(f'<circle cx="{X(p[0]):.1f}" cy="{Y(p[idx]):.1f}" r="2.5" fill="{c}"/>')
            out.append(f'<line x1="{W-R+8}" x2="{W-R+30}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/>')
            out.append(f'<text x="{W-R+34}" y="{ly+4}">{label} {name}</text>')
            ly += 18
    out.append("</svg>")
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {a.out} ({len(series)} series)")


if __name__ == "__main__":
    main()
