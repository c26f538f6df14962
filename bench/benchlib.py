"""What the benchmarks share: where things are (importing this puts src/ and bench/ on
sys.path) and one timer."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "src")
OUT = os.path.join(HERE, "out")
for _p in (SRC, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def timed(fn, rounds: int, between=None):
    """(median ms, every run's ms) of `rounds` calls of fn(); between(), if given, runs
    untimed before each call (to drop what the last one made, say)."""
    out = []
    for _ in range(rounds):
        if between is not None:
            between()
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out), out


def build_walker() -> str:
    """The minimal C /proc walker (walk.c), compiled once into bench/out/."""
    exe = os.path.join(OUT, "walk")
    src = os.path.join(HERE, "walk.c")
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
        os.makedirs(OUT, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe
