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
turns. --placement samples, every 5 ms of each run, which CPU busgated and
lpclient last ran on (/proc/PID/stat), and prints how often it was the
same one: on a machine of two vCPUs the one-subscriber rows are bound by
the two sharing one. Every run is checked as in run.py (every message in
order, once).
"""

import os
import shutil
import statistics
import sys
import threading

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


class Placement(threading.Thread):
    """Samples which CPU the gateway and lpclient last ran on (field 39 of
    /proc/PID/stat) every 5 ms until stopped; same / samples."""

    def __init__(self, gateway):
        super().__init__(daemon=True)
        self.gateway = os.path.realpath(gateway)
        self.done = threading.Event()
        self.same = self.samples = 0

    @staticmethod
    def find(match):
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    argv0 = f.read().split(b"\0", 1)[0].decode(errors="replace")
            except OSError:
                continue
            if match(argv0):
                return int(d)
        return None

    @staticmethod
    def cpu(pid):
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[36]

    def run(self):
        g = c = None
        while not self.done.wait(0.005):
            try:
                if g is None or c is None:
                    g = self.find(lambda a: os.path.realpath(a) == self.gateway)
                    c = self.find(lambda a: os.path.basename(a) == "lpclient")
                    continue
                same = self.cpu(g) == self.cpu(c)
            except OSError:
                g = c = None  # one of them ended
                continue
            self.samples += 1
            self.same += same

    def stop(self):
        self.done.set()
        self.join()
        return self.same / self.samples if self.samples else None


def one_run(b, row, placement=False):
    sampler = Placement(b.busgated) if placement else None
    if sampler:
        sampler.start()
    try:
        if row[0] == "publish":
            r = b.checked_run(b.publish_case, row[1], row[2])
        else:
            r = b.checked_run(b.fanout_case, row[1], row[2], row[3])
    finally:
        share = sampler.stop() if sampler else None
    r["same_cpu"] = share
    return r


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


def placement_cell(rs):
    shares = [r["same_cpu"] for r in rs if r["same_cpu"] is not None]
    return " ".join("%.0f%%" % (100 * x) for x in shares) or "-"


def throughput_table(b, builds, rows, rounds, placement):
    run.log("%d rows x %d builds x %d rounds" % (len(rows), len(builds), rounds))
    lines = ["| row | build | msg/s, each run | median | after / before | "
             "gw CPU s / 1M msgs, median | gw, client CPU | gw and client on one CPU | check |",
             "| :--- | :--- | :--- | ---: | ---: | ---: | :--- | :--- | :--- |"]
    for row in rows:
        got = turns(b, builds, rounds, lambda b: one_run(b, row, placement))
        base = med([r["rate"] for r in got[builds[0][0]]])
        for name, _ in builds:
            rs = got[name]
            m = med([r["rate"] for r in rs])
            bad = [c for c in (run.check_cell(r) for r in rs) if c != "ok"]
            lines.append("| %s | %s | %s | %s | %s | %.3f | %s | %s | %s |" % (
                row_name(row), name, " ".join(run.fmt_rate(r["rate"]) for r in rs),
                run.fmt_rate(m), "%.2f" % (m / base) if base else "-",
                med([cpu_per_million(r) for r in rs]),
                " ".join("%.0f+%.0f%%" % (100 * r["cpu_gw"] / r["seconds"],
                                          100 * r["cpu_client"] / r["seconds"]) for r in rs),
                placement_cell(rs) if placement else "-", "; ".join(bad) or "ok"))
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
    ap.add_argument("--placement", action="store_true",
                    help="sample which CPU busgated and lpclient run on")
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
        out += throughput_table(b, builds, rows, a.rounds, a.placement) if rows else []
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
