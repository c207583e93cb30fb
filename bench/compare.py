#!/usr/bin/env python3
"""Before -> after of two bench reports (run.py --write), row by row.

    python3 bench/compare.py BEFORE.md AFTER.md

For each table of the fan-out and publish sections, rows are matched by
their leading key columns (payload, subscribers, topics / publishers) and
the gateway's figures are printed as "before -> after (x ratio)". The
nats-server and raw columns come from AFTER (measured in the same run as
the gateway figures they are compared with). Standard library only.
"""

import re
import sys

KEYS = ("payload", "subscribers", "topics", "publishers")
SHOW = ("gateway msg/s", "gw CPU s / 1M msgs")
SAME_RUN = ("nats msg/s", "gw/nats")


def tables(path):
    """{section title: [(header, [rows])]} of a markdown report."""
    out, section, header = {}, None, None
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("## "):
                section, header = line[3:], None
            elif line.startswith("|") and section is not None:
                cells = [c.strip() for c in line.strip("|").split("|")]
                if header is None:
                    header = cells
                    out.setdefault(section, []).append((header, []))
                elif not set("".join(cells)) <= set("-: "):
                    out[section][-1][1].append(dict(zip(header, cells)))
            else:
                header = None
    return out


def number(text):
    """1.23M, 456.7k, 0.320 -> float; None if not a figure."""
    m = re.match(r"^([0-9.]+)\s*([kM]?)$", text or "")
    if not m:
        return None
    return float(m.group(1)) * {"": 1, "k": 1e3, "M": 1e6}[m.group(2)]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    before, after = tables(sys.argv[1]), tables(sys.argv[2])
    for section, tabs in after.items():
        if section not in before or not section[:2] in ("1.", "2."):
            continue
        header, rows = tabs[0]
        keys = [k for k in header if k in KEYS]
        show = [c for c in SHOW if c in header]
        same = [c for c in SAME_RUN if c in header]
        old = {tuple(r.get(k) for k in keys): r for r in before[section][0][1]}
        print("### %s\n" % section)
        print("| " + " | ".join(keys + show + same) + " |")
        print("|" + " ---: |" * len(keys + show + same))
        for r in rows:
            b = old.get(tuple(r.get(k) for k in keys), {})
            cells = [r[k] for k in keys]
            for c in show:
                x, y = number(b.get(c)), number(r.get(c))
                ratio = " (%.2fx)" % (y / x) if x and y else ""
                cells.append("%s -> %s%s" % (b.get(c, "?"), r.get(c, "?"), ratio))
            cells += [r.get(c, "") for c in same]
            print("| " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
