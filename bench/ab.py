#!/usr/bin/env python3
"""Two busgated builds in turns (bench/run.py's scenarios).

Comparing two reports of bench/run.py compares two hours of a machine
whose speed drifts (RESULTS.md: the vCPUs ran at up to 2x unequal speeds
in one run). This runs the rows asked for with the BEFORE daemon and the
AFTER daemon in turns, the order swapped every round, so both sample the
same minutes, and prints each run and the medians.

    python3 bench/ab.py --builddir BUILD --before OLD/busgated --after NEW/busgated
                        [--rows 16:100:1,256:1000:1] [--rounds 4] [--latency]

A row is payload:subscribers:topics (fan-out) or payload:pN (publish, N
publishers); --latency also runs the latency scenario (1 subscriber) in
turns. Every run is checked as in run.py (every message in order, once).
"""

import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def parse_row(text):
    size, rest = text.split(":", 1)
    if rest.startswith("p"):
        return ("publish", int(size), int(rest[1:]))
    subs, topics = rest.split(":")
    return ("fanout", int(size), int(subs), int(topics))


def row_name(row):
    if row[0] == "publish":
        return "publish %d B x %d" % row[1:]
    return "%d B x %d, %d topic%s" % (row[1], row[2], row[3], "s" if row[3] > 1 else "")


def one_run(b, row):
    if row[0] == "publish":
        return b.checked_run(b.publish_case, row[1], row[2])
    return b.checked_run(b.fanout_case, row[1], row[2], row[3])


def cpu_per_million(r):
    return r["cpu_gw"] / r["seconds"] / (r["rate"] / 1e6) if r["rate"] else 0.0


def med(xs):
    return statistics.median(xs) if xs else 0.0


def turns(b, builds, rounds, fn):
    """fn(b) with each build in turn, the order swapped every round:
    {name: [results]}."""
    out = {name: [] for name, _ in builds}
    for i in range(rounds):
        for name, path in (builds if i % 2 == 0 else builds[::-1]):
            b.busgated = path
            out[name].append(fn(b))
    return out


def throughput_table(b, builds, rows, rounds):
    run.log("%d rows x %d builds x %d rounds" % (len(rows), len(builds), rounds))
    lines = ["| row | build | msg/s, each run | median | after / before | "
             "gw CPU s / 1M msgs, median | check |",
             "| :--- | :--- | :--- | ---: | ---: | ---: | :--- |"]
    for row in rows:
        got = turns(b, builds, rounds, lambda b: one_run(b, row))
        base = med([r["rate"] for r in got[builds[0][0]]])
        for name, _ in builds:
            rs = got[name]
            m = med([r["rate"] for r in rs])
            bad = [c for c in (run.check_cell(r) for r in rs) if c != "ok"]
            lines.append("| %s | %s | %s | %s | %s | %.3f | %s |" % (
                row_name(row), name, " ".join(run.fmt_rate(r["rate"]) for r in rs),
                run.fmt_rate(m), "%.2f" % (m / base) if base else "-",
                med([cpu_per_million(r) for r in rs]), "; ".join(bad) or "ok"))
    return lines


def latency_table(b, builds, rounds):
    def once(b):
        b.run_latency()
        row = b.results["latency"][0]
        return row["direct"], row["gw"]

    b.a.lat_subs = [1]
    got = turns(b, builds, rounds, once)
    lines = ["| build | direct p99 us, each run | gateway p99 us | added p99 us | "
             "within 2 x direct p99 | added p50 us, median |",
             "| :--- | :--- | :--- | :--- | ---: | ---: |"]
    for name, _ in builds:
        pairs = got[name]
        added = [g["lat_p99_us"] - d["lat_p99_us"] for d, g in pairs]
        ok = sum(a <= run.LATENCY_TARGET * d["lat_p99_us"] for a, (d, _) in zip(added, pairs))
        lines.append("| %s | %s | %s | %s | %d of %d | %+.1f |" % (
            name, " ".join("%.1f" % d["lat_p99_us"] for d, _ in pairs),
            " ".join("%.1f" % g["lat_p99_us"] for _, g in pairs),
            " ".join("%+.1f" % a for a in added), ok, len(pairs),
            med([g["lat_p50_us"] - d["lat_p50_us"] for d, g in pairs])))
    return lines


def main():
    ap = run.arg_parser(__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="the busgated to compare against")
    ap.add_argument("--after", required=True, help="the busgated under test")
    ap.add_argument("--rows", default="16:1:1,16:100:1,16:1000:1,256:1000:1",
                    help="payload:subscribers:topics or payload:pN, comma-separated")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--latency", action="store_true", help="also the latency scenario")
    a = run.parse_args(ap)
    a.no_nats = True
    rows = [parse_row(x) for x in a.rows.split(",") if x]
    builds = [("before", a.before), ("after", a.after)]
    b = run.Bench(a)
    run.check_built(ap, b)
    for _, path in builds:
        if not os.access(path, os.X_OK):
            ap.error("%s is not an executable" % path)
    out = ["before: `%s`, after: `%s`; %d rounds, the order swapped each round; "
           "%ss measured per run" % (a.before, a.after, a.rounds, a.duration), ""]
    try:
        out += throughput_table(b, builds, rows, a.rounds) if rows else []
        if a.latency:
            out += [""] + latency_table(b, builds, a.rounds)
    finally:
        shutil.rmtree(b.tmp, ignore_errors=True)
    if b.uneven:
        out += ["", "%d of %d runs began with the CPUs at unequal speeds" % (
            len(b.uneven), b.checked)]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
