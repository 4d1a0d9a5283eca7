#!/usr/bin/env python3
"""Tables and plots from a bench/peers/run.sh directory.

    bench/peers/report.py OUT_DIR [--docs docs/benchmarks.md --img-dir docs/img] [--took SECONDS]

Reads OUT_DIR/runs.jsonl (one line per chat-bench run: system, workload, versions, settings,
load average) and the chat-bench JSON reports in OUT_DIR/raw/, and writes:
  OUT_DIR/results.csv     one row per run and measured point (every repeat)
  OUT_DIR/results.md      the Markdown section: medians over the repeats, with the spread
  OUT_DIR/peers-latency-vs-rate.svg, OUT_DIR/peers-memory-per-connection.svg
With --docs, the section replaces what is between <!-- peers:begin --> and <!-- peers:end -->
in that file (nothing else in the file is touched; the markers are appended if missing), and
the SVGs are copied to --img-dir. The hand-written reading in bench/peers/reading.md is
included after the tables.

Standard library only.
"""
import argparse
import csv
import json
import math
import os
import shutil
import statistics
import sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"

NAMES = {
    "tern": "Tern (embedded)",
    "tern_dist": "Tern (distributed)",
    "centrifugo": "Centrifugo (default)",
    "centrifugo_durable": "Centrifugo (Redis, history, fsync)",
    "synapse": "Synapse (Matrix)",
    "socketio": "Socket.IO (default)",
    "socketio_recovery": "Socket.IO (recovery)",
}
ORDER = list(NAMES)
COLORS = {
    "tern": "#1f77b4", "tern_dist": "#17becf", "centrifugo": "#d62728", "centrifugo_durable": "#ff7f0e",
    "synapse": "#2ca02c", "socketio": "#9467bd", "socketio_recovery": "#8c564b",
}


def name(s):
    return NAMES.get(s, s)


def order_key(s):
    return ORDER.index(s) if s in ORDER else len(ORDER)


def load_runs(out):
    runs = []
    path = os.path.join(out, "runs.jsonl")
    if not os.path.exists(path):
        sys.exit(f"no {path}: nothing was run")
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        r = json.loads(line)
        p = os.path.join(out, "raw", r["json"])
        r["report"] = None
        if r["ok"] and os.path.exists(p):
            try:
                r["report"] = json.load(open(p))
            except ValueError:
                r["ok"] = False
        runs.append(r)
    return runs


def ms(us):
    return us / 1000.0


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    m = statistics.median(xs)
    if len(xs) == 1:
        return fmt(m)
    return f"{fmt(m)} ({fmt(min(xs))}–{fmt(max(xs))})"


def f_ms(v):
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def f_num(v):
    return "—" if v is None else f"{v:,.0f}"


def f_kib(v):
    return "—" if v is None else f"{v:.1f}"


def f_s(v):
    return "—" if v is None else f"{v:.2f}"


# --------------------------------------------------------------------------------------------
# rows

def rows_of(runs):
    """Flatten every run into CSV rows (one per measured point)."""
    out = []
    for r in runs:
        base = {k: r[k] for k in ("rep", "workload", "system", "variant", "version", "settings", "load_before", "load_after")}
        base["system_name"] = name(r["system"])
        rep = r["report"]
        if not r["ok"] or rep is None:
            out.append({**base, "ok": False})
            continue
        w = r["workload"]
        if w == "idle":
            mem = rep.get("server_memory") or {}
            out.append({**base, "ok": True, "param": rep["requested"], "established": rep["established"],
                        "failed": rep["failed"], "dropped": rep["dropped"],
                        "rss_after_mib": round(mem.get("rss_after_kib", 0) / 1024, 1) if mem else None,
                        "per_conn_kib": round(mem["per_connection_kib"], 2) if mem else None,
                        "handshakes_per_s": round(rep["handshakes_per_s"]),
                        "handshake_p99_ms": ms(rep["handshake"]["p99_us"])})
        elif w in ("sweep", "group"):
            steps = rep["steps"] if "steps" in rep else [rep]
            for s in steps:
                d = s["delivery"]
                out.append({**base, "ok": True, "param": s["target_rate"], "senders": s["senders"],
                            "recipients": s["recipients_per_message"],
                            "sent_per_s": round(s["sent_per_s"]), "deliveries_per_s": round(s["deliveries_per_s"]),
                            "p50_ms": ms(d["p50_us"]), "p99_ms": ms(d["p99_us"]), "p999_ms": ms(d["p999_us"]),
                            "ack_p99_ms": ms(s["ack"]["p99_us"]), "send_lag_p99_ms": ms(s["send_lag"]["p99_us"]),
                            "lost": s["lost"], "unacked": s["unacked"], "errors": sum(s["errors"].values()),
                            "knee_best_rate": rep.get("best_rate") if w == "sweep" else None})
        elif w == "storm":
            out.append({**base, "ok": True, "param": rep["clients"], "chat_size": rep["chat_size"],
                        "missed": rep["missed_per_chat"], "reconnected": rep["reconnected"],
                        "all_back_s": rep["all_back_s"], "caught_up": rep["caught_up"],
                        "no_catch_up": rep["no_catch_up"], "timed_out": rep["timed_out"],
                        "all_caught_up_s": rep["all_caught_up_s"],
                        "caught_up_p50_ms": ms(rep["caught_up_after"]["p50_us"]),
                        "caught_up_p99_ms": ms(rep["caught_up_after"]["p99_us"]),
                        "recovered_sessions": rep["recovered_sessions"], "duplicates": rep["duplicates"]})
    return out


CSV_FIELDS = ["rep", "workload", "system", "system_name", "variant", "param", "ok", "version", "settings",
              "load_before", "load_after", "established", "failed", "dropped", "rss_after_mib", "per_conn_kib",
              "handshakes_per_s", "handshake_p99_ms", "senders", "recipients", "sent_per_s", "deliveries_per_s",
              "p50_ms", "p99_ms", "p999_ms", "ack_p99_ms", "send_lag_p99_ms", "lost", "unacked", "errors",
              "knee_best_rate", "chat_size", "missed", "reconnected", "all_back_s", "caught_up", "no_catch_up",
              "timed_out", "all_caught_up_s", "caught_up_p50_ms", "caught_up_p99_ms", "recovered_sessions",
              "duplicates"]


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def group_by(rows, *keys):
    g = defaultdict(list)
    for r in rows:
        g[tuple(r.get(k) for k in keys)].append(r)
    return g


def systems_in(rows):
    return sorted({r["system"] for r in rows}, key=order_key)


def load_of(rs):
    """The machine's 1-minute load average when these runs started (median, range)."""
    return spread([r.get("load_before") for r in rs], lambda v: f"{v:.1f}")


def md_table(headers, body):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(out)


def meta(runs):
    m = {}
    for r in runs:
        m.setdefault(r["system"], (r["version"], r["settings"], r["acks"]))
    return m


# --------------------------------------------------------------------------------------------
# tables

def systems_table(runs):
    body = []
    for s, (version, settings, acks) in sorted(meta(runs).items(), key=lambda kv: order_key(kv[0])):
        body.append([name(s), version, settings, acks])
    return md_table(["system", "version", "settings", "an ack means"], body)


def idle_table(rows):
    g = group_by([r for r in rows if r["workload"] == "idle" and r["ok"]], "system", "param")
    body = []
    for (s, n), rs in sorted(g.items(), key=lambda kv: (order_key(kv[0][0]), kv[0][1])):
        body.append([name(s), f"{n:,}", f"{min(r['established'] for r in rs):,}",
                     spread([r["per_conn_kib"] for r in rs], f_kib),
                     spread([r["rss_after_mib"] for r in rs], lambda v: f"{v:,.0f}"),
                     spread([r["handshakes_per_s"] for r in rs], f_num), load_of(rs), len(rs)])
    return md_table(["system", "connections", "established (min)", "server RSS per connection, KiB",
                     "server RSS, MiB", "handshakes/s during the ramp", "load avg", "runs"], body)


def sweep_points(rows):
    """{system: {rate: [rows]}}"""
    pts = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["workload"] == "sweep" and r["ok"]:
            pts[r["system"]][r["param"]].append(r)
    return pts


def knee(points, limit=50.0):
    """Highest offered rate whose median p99 stayed ≤ limit, below the first rate that passed it."""
    best = None
    for rate in sorted(points):
        p99 = med([r["p99_ms"] for r in points[rate]])
        delivered = med([r["deliveries_per_s"] for r in points[rate]])
        if p99 is None or p99 > limit or (delivered or 0) < 0.9 * rate * (points[rate][0].get("recipients") or 1):
            break
        best = rate
    return best


def sweep_table(rows):
    pts = sweep_points(rows)
    body = []
    for s in sorted(pts, key=order_key):
        for rate in sorted(pts[s]):
            rs = pts[s][rate]
            body.append([name(s), f"{rate:,.0f}", spread([r["deliveries_per_s"] for r in rs], f_num),
                         spread([r["p50_ms"] for r in rs], f_ms), spread([r["p99_ms"] for r in rs], f_ms),
                         spread([r["p999_ms"] for r in rs], f_ms), spread([r["ack_p99_ms"] for r in rs], f_ms),
                         sum(r["lost"] for r in rs), load_of(rs), len(rs)])
    return md_table(["system", "offered msg/s", "delivered/s", "p50 ms", "p99 ms", "p99.9 ms", "ack p99 ms",
                     "not delivered within the 5 s drain (all runs)", "load avg", "runs"], body)


def knee_table(rows):
    pts = sweep_points(rows)
    body = []
    for s in sorted(pts, key=order_key):
        k = knee(pts[s])
        per_rep = defaultdict(dict)
        for rate, rs in pts[s].items():
            for r in rs:
                per_rep[r["rep"]][rate] = r
        reps = []
        for rep, by_rate in sorted(per_rep.items()):
            best = None
            for rate in sorted(by_rate):
                r = by_rate[rate]
                if r["p99_ms"] > 50 or r["deliveries_per_s"] < 0.9 * rate:
                    break
                best = rate
            reps.append("—" if best is None else f"{best:,.0f}")
        tried = ", ".join(f"{x:,.0f}" for x in sorted(pts[s]))
        body.append([name(s), "below the lowest rate tried" if k is None else f"**{k:,.0f}**",
                     " / ".join(reps), tried])
    return md_table(["system", "highest offered rate with p99 ≤ 50 ms (medians)", "per repeat", "rates tried"], body)


def group_table(rows):
    g = group_by([r for r in rows if r["workload"] == "group" and r["ok"]], "system", "param")
    body = []
    for (s, rate), rs in sorted(g.items(), key=lambda kv: (order_key(kv[0][0]), kv[0][1])):
        exp = rate * (rs[0]["recipients"] or 0)
        body.append([name(s), f"{rate:,.0f} × {rs[0]['recipients']:,}", f_num(exp),
                     spread([r["deliveries_per_s"] for r in rs], f_num), spread([r["p50_ms"] for r in rs], f_ms),
                     spread([r["p99_ms"] for r in rs], f_ms), spread([r["send_lag_p99_ms"] for r in rs], f_ms),
                     sum(r["lost"] for r in rs), load_of(rs), len(rs)])
    return md_table(["system", "msg/s × recipients", "expected deliveries/s", "deliveries/s", "p50 ms", "p99 ms",
                     "bench send lag p99 ms", "not delivered within the 10 s drain (all runs)", "load avg", "runs"], body)


def storm_table(rows):
    g = group_by([r for r in rows if r["workload"] == "storm" and r["ok"]], "system", "param")
    body = []
    for (s, n), rs in sorted(g.items(), key=lambda kv: (order_key(kv[0][0]), kv[0][1])):
        caught = [r["caught_up"] for r in rs]
        if all(r["caught_up"] == 0 and r["no_catch_up"] > 0 for r in rs):
            cu = "no catch-up in this configuration"
        else:
            cu = spread([r["all_caught_up_s"] for r in rs], f_s) + f" ({min(caught):,}–{max(caught):,} of {n:,} caught up)"
        body.append([name(s), f"{n:,} (chats of {rs[0]['chat_size']}, {rs[0]['missed']} missed each)",
                     " / ".join(f"{r['reconnected']:,}" for r in rs),
                     spread([r["all_back_s"] for r in rs], f_s), cu,
                     spread([r["caught_up_p99_ms"] for r in rs], f_ms) if any(caught) else "—",
                     f"{min(r['recovered_sessions'] for r in rs):,}", load_of(rs), len(rs)])
    return md_table(["system", "clients", "back (per run)", "all back, s", "all caught up, s", "per-client caught-up p99 ms",
                     "sessions recovered (min)", "load avg", "runs"], body)


def failures_list(runs):
    bad = [r for r in runs if not r["ok"]]
    if not bad:
        return "Every run completed."
    return "Runs that failed (see the run's `logs/*.progress`): " + "; ".join(
        f"{name(r['system'])} {r['workload']} {r['variant']} (repeat {r['rep']})" for r in bad) + "."


# --------------------------------------------------------------------------------------------
# SVG

def svg_latency(rows, path, limit=50.0):
    pts = sweep_points(rows)
    series = []
    for s in sorted(pts, key=order_key):
        line = []
        for rate in sorted(pts[s]):
            rs = pts[s][rate]
            line.append((rate, med([r["p50_ms"] for r in rs]), med([r["p99_ms"] for r in rs]),
                         min(r["p99_ms"] for r in rs), max(r["p99_ms"] for r in rs)))
        series.append((s, line))
    if not series:
        return False
    rates = [p[0] for _, l in series for p in l]
    lats = [v for _, l in series for p in l for v in p[1:] if v and v > 0] + [limit]
    W, H, L, R, T, B = 820, 460, 70, 230, 40, 50
    x0, x1 = 10 ** math.floor(math.log10(min(rates))), 10 ** math.ceil(math.log10(max(rates)))
    y0 = 10 ** math.floor(math.log10(max(min(lats), 0.1)))
    y1 = 10 ** math.ceil(math.log10(max(lats)))

    def X(r):
        return L + (math.log10(r) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)) * (W - L - R)

    def Y(v):
        v = max(v, y0)
        return T + (1 - (math.log10(v) - math.log10(y0)) / (math.log10(y1) - math.log10(y0))) * (H - T - B)

    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L}" y="22" font-size="15">1:1 delivery latency vs offered rate (median of repeats; bar: p99 range)</text>']
    d = y0
    while d <= y1 * 1.0001:
        o.append(f'<line x1="{L}" x2="{W-R}" y1="{Y(d):.1f}" y2="{Y(d):.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{L-6}" y="{Y(d)+4:.1f}" text-anchor="end">{d:g} ms</text>')
        d *= 10
    d = x0
    while d <= x1 * 1.0001:
        for m in (1, 2, 5):
            v = d * m
            if v <= x1 * 1.0001:
                o.append(f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{T}" y2="{H-B}" stroke="#eee"/>')
                o.append(f'<text x="{X(v):.1f}" y="{H-B+16}" text-anchor="middle">{v:,.0f}</text>')
        d *= 10
    o.append(f'<text x="{(L+W-R)/2}" y="{H-10}" text-anchor="middle">offered rate (msg/s, log scale)</text>')
    o.append(f'<line x1="{L}" x2="{W-R}" y1="{Y(limit):.1f}" y2="{Y(limit):.1f}" stroke="#888" stroke-dasharray="2,3"/>')
    o.append(f'<text x="{W-R+4}" y="{Y(limit)+4:.1f}" fill="#666">p99 {limit:g} ms</text>')
    ly = T + 24
    for s, line in series:
        c = COLORS.get(s, "#333")
        for idx, dash in ((2, ""), (1, ' stroke-dasharray="5,4"')):
            pts_ = " ".join(f"{X(p[0]):.1f},{Y(p[idx]):.1f}" for p in line if p[idx])
            o.append(f'<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="{pts_}"/>')
        for p in line:
            o.append(f'<circle cx="{X(p[0]):.1f}" cy="{Y(p[2]):.1f}" r="3" fill="{c}"/>')
            if p[3] != p[4]:
                o.append(f'<line x1="{X(p[0]):.1f}" x2="{X(p[0]):.1f}" y1="{Y(p[3]):.1f}" y2="{Y(p[4]):.1f}" stroke="{c}"/>')
        o.append(f'<line x1="{W-R+8}" x2="{W-R+30}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"/>')
        o.append(f'<text x="{W-R+34}" y="{ly+4}">{name(s)}</text>')
        ly += 18
    o.append(f'<text x="{W-R+8}" y="{ly+8}" fill="#666">solid p99, dashed p50</text>')
    o.append("</svg>")
    open(path, "w").write("\n".join(o) + "\n")
    return True


def svg_memory(rows, path):
    g = group_by([r for r in rows if r["workload"] == "idle" and r["ok"] and r.get("per_conn_kib") is not None],
                 "system", "param")
    bars = sorted(((s, n, med([r["per_conn_kib"] for r in rs]), min(r["per_conn_kib"] for r in rs),
                    max(r["per_conn_kib"] for r in rs)) for (s, n), rs in g.items()),
                  key=lambda b: (order_key(b[0]), b[1]))
    if not bars:
        return False
    W, L, R, T, rowh = 820, 330, 90, 40, 22
    H = T + rowh * len(bars) + 40
    vmax = max(b[4] for b in bars) * 1.1 or 1

    def X(v):
        return L + v / vmax * (W - L - R)

    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="10" y="22" font-size="15">Server memory per idle connection (RSS growth / connections; median, range)</text>']
    y = T
    for s, n, m, lo, hi in bars:
        c = COLORS.get(s, "#333")
        o.append(f'<text x="{L-8}" y="{y+15}" text-anchor="end">{name(s)}, {n:,} conns</text>')
        o.append(f'<rect x="{L}" y="{y+3}" width="{max(X(m)-L, 1):.1f}" height="{rowh-6}" fill="{c}"/>')
        if hi != lo:
            o.append(f'<line x1="{X(lo):.1f}" x2="{X(hi):.1f}" y1="{y+rowh/2:.1f}" y2="{y+rowh/2:.1f}" stroke="#000"/>')
        o.append(f'<text x="{X(max(m, hi))+6:.1f}" y="{y+15}">{m:.1f} KiB</text>')
        y += rowh
    o.append("</svg>")
    open(path, "w").write("\n".join(o) + "\n")
    return True


# --------------------------------------------------------------------------------------------

def section(runs, rows, img_prefix, took, out):
    loads = [r["load_before"] for r in runs] + [r["load_after"] for r in runs]
    reps = max((r["rep"] for r in runs), default=0)
    dates = sorted({r["json"].split("-")[0] for r in runs})
    parts = [BEGIN, "## Side by side with the peers (issue #14)", ""]
    parts.append(
        f"Generated by `bench/peers/run.sh` (then `bench/peers/report.py`) from {len(runs)} chat-bench runs, "
        f"{reps} repeat(s), systems interleaved; {os.cpu_count()} cores; each server (with its database or "
        f"broker) pinned to core(s) `{os.environ.get('SERVER_CPUS', '1')}`, chat-bench to core(s) "
        f"`{os.environ.get('BENCH_CPUS', '0')}`; load average during the runs "
        f"{min(loads):.1f}–{max(loads):.1f} (median {statistics.median(loads):.1f})"
        + (f"; the whole run took {took // 60} min {took % 60} s" if took else "") + ". "
        "Cells are medians over the repeats with the range in brackets. Every run and point: "
        "[`benchmarks-peers.csv`](benchmarks-peers.csv).")
    parts += ["", "```sh", "bench/peers/run.sh /tmp/peers          # installs, builds, runs, writes this section",
              "REPEAT=3 SYSTEMS=\"tern centrifugo\" WORKLOADS=sweep bench/peers/run.sh /tmp/p2   # a subset",
              "```", ""]
    parts += ["### Systems, versions, settings and what an ack means", "", systems_table(runs), ""]
    parts += ["### (1) Idle connections: server memory per connection", "",
              "`chat-bench connect -n N --hold 3s --settle 3s`: RSS of the server process(es) before and after "
              "the ramp, divided by the connections. Matrix clients hold a `/sync` long-poll instead of a socket.", "",
              idle_table(rows), ""]
    if os.path.exists(os.path.join(out, "peers-memory-per-connection.svg")):
        parts += [f"![memory per connection]({img_prefix}peers-memory-per-connection.svg)", ""]
    parts += ["### (2) 1:1 messages at fixed offered rates", "",
              "`chat-bench sweep --rates … --duration 5s --warmup 1s --keep-going`: pairs of users in 1:1 chats, "
              "both sides sending on an open-loop schedule; latency from the scheduled send instant to the "
              "other member's receipt (so a stalled sender is not hidden).", "",
              knee_table(rows), "", sweep_table(rows), ""]
    if os.path.exists(os.path.join(out, "peers-latency-vs-rate.svg")):
        parts += [f"![latency vs offered rate]({img_prefix}peers-latency-vs-rate.svg)", ""]
    parts += ["### (3) One group of 1000 members, several senders", "",
              "`chat-bench group --members 1000 --senders 10 --rate R --duration 10s`: every delivery to "
              "every member measured.", "", group_table(rows), ""]
    parts += ["### (4) Reconnect storm", "",
              "`chat-bench storm -n N --chat-size 10 --missed 5 --concurrency 1000`: N clients (in chats of 10 "
              "with one sender who stays connected) drop their TCP connections at once; each sender sends 5 "
              "messages (all acked); then all N reconnect at once and catch up the way the system defines "
              "(Tern `sync` from the last seq; Centrifugo subscribe with `recover` from offset+epoch; "
              "Socket.IO connection state recovery with pid+offset; Matrix `/sync?since=`). "
              "\"All back\": the last client's handshake (Matrix: its first `/sync` answer); "
              "\"all caught up\": the last client holding all 5 missed messages.", "",
              storm_table(rows), ""]
    parts += [failures_list(runs), ""]
    reading = os.path.join(HERE, "reading.md")
    if os.path.exists(reading):
        parts += [open(reading).read().strip(), ""]
    parts.append(END)
    return "\n".join(parts) + "\n"


def update_docs(doc, text):
    body = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n"
    if BEGIN in body and END in body:
        a = body.index(BEGIN)
        b = body.index(END, a) + len(END)
        if body[b:b + 1] == "\n":
            b += 1
        body = body[:a] + text + body[b:]
    else:
        body = body.rstrip("\n") + "\n\n" + text
    tmp = doc + ".tmp"
    open(tmp, "w").write(body)
    os.replace(tmp, doc)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--docs", help="Markdown file whose peers section to replace")
    ap.add_argument("--img-dir", help="where the SVGs go (with --docs)")
    ap.add_argument("--took", type=int, default=0, help="seconds the whole run took")
    a = ap.parse_args()
    runs = load_runs(a.out)
    rows = rows_of(runs)
    write_csv(rows, os.path.join(a.out, "results.csv"))
    svg_latency(rows, os.path.join(a.out, "peers-latency-vs-rate.svg"))
    svg_memory(rows, os.path.join(a.out, "peers-memory-per-connection.svg"))
    img_prefix = ""
    if a.docs and a.img_dir:
        os.makedirs(a.img_dir, exist_ok=True)
        for f in ("peers-latency-vs-rate.svg", "peers-memory-per-connection.svg"):
            p = os.path.join(a.out, f)
            if os.path.exists(p):
                shutil.copy(p, os.path.join(a.img_dir, f))
        img_prefix = os.path.relpath(a.img_dir, os.path.dirname(os.path.abspath(a.docs))) + "/"
    if a.docs:
        shutil.copy(os.path.join(a.out, "results.csv"),
                    os.path.join(os.path.dirname(os.path.abspath(a.docs)), "benchmarks-peers.csv"))
    text = section(runs, rows, img_prefix, a.took, a.out)
    open(os.path.join(a.out, "results.md"), "w").write(text)
    if a.docs:
        update_docs(a.docs, text)
        print(f"updated the peers section of {a.docs}")
    print(f"wrote {a.out}/results.csv, results.md and the plots")


if __name__ == "__main__":
    main()
