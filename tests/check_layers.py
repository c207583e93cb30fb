#!/usr/bin/env python3
"""No circle between the modules of src/: a module (a file pair, with its
-part.c files and -int.h header) may include another's header only if that
one does not, directly or not, include its own. Fails naming the circle."""

import os
import re
import sys

SRC = os.path.join(os.environ.get("srcdir", os.path.dirname(os.path.abspath(__file__)) + "/.."), "src")
# Files that are part of another module without carrying its name.
PART_OF = {"stats": "router", "main": "main", "util": "util", "paths": "paths"}


def module(name):
    stem = os.path.splitext(name)[0]
    stem = PART_OF.get(stem, stem)
    return stem.split("-")[0]


def graph():
    edges = {}
    for name in sorted(os.listdir(SRC)):
        if not name.endswith((".c", ".h")):
            continue
        with open(os.path.join(SRC, name), encoding="utf-8") as f:
            for inc in re.findall(r'^#include "([^"]+)"', f.read(), re.M):
                a, b = module(name), module(inc)
                if a != b:
                    edges.setdefault(a, set()).add(b)
    return edges


def find_cycle(edges):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def main():
    edges = graph()
    cycle = find_cycle(edges)
    for a in sorted(edges):
        print("%s -> %s" % (a, ", ".join(sorted(edges[a]))))
    if cycle:
        print("FAIL: modules include each other: " + " -> ".join(cycle))
        return 1
    print("ok: no circle between %d modules" % len(edges))
    return 0


if __name__ == "__main__":
    sys.exit(main())
