#!/usr/bin/env python3
"""How long report, plot and export-trace take on a history of a million snapshots.

Builds a history straight through the recorder's schema (what `memtrack record -i 0.1`
would leave after 28 hours, without the 28 hours): a few processes that take and drop
buffers every few hundred snapshots, one that leaks a buffer every few thousand, one holding
a 2^64-1 dma-buf throughout (numbers beyond SQLite's 64 bits at scale). Then runs each
command as a user would (a fresh `python -m memtrack`) and prints its wall time, its peak
RSS and what it wrote.

    python3 bench/history_scale.py [--snapshots 1000000] [--keep DIR] [--reuse] [--src DIR]

--reuse runs the commands on the history --keep left there; --src runs another memtrack's
code (an A/B: `git archive OLD src | tar -x -C /tmp/old`, then --src /tmp/old/src). Wall
times on a busy machine mislead: the cpu column is the commands' own user+system time.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

import benchlib  # noqa: F401  (puts src/ on sys.path)

from memtrack.history import Recorder  # noqa: E402
from memtrack.history.schema import SNAPSHOT_COLS, insert  # noqa: E402

MiB = 1 << 20
U64 = 2 ** 64 - 1


def build(db: str, n: int, seed: int = 1) -> dict:
    rnd = random.Random(seed)
    Recorder(db).close()                                 # the schema, as record creates it
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("BEGIN")
    t0 = time.time() - n * 0.1
    run = insert(con, "runs", "started, interval, hostname, kernel", (t0, 0.1, "bench", "6.x"))
    procs = []
    for k in range(10):
        procs.append(insert(con, "processes", "pid, comm, cmdline, uid",
                            (1000 + k, f"app{k}", f"/usr/bin/app{k} --serve", 1000)))
    bufs = []                                            # (row id, size, category)

    def new_buffer(kind, size, cat):
        bid = insert(con, "buffers", "kind, dev, inode, size, exporter, name, category, nattch",
                     (kind, "00:01", 5000 + len(bufs), size, "system" if kind == "dmabuf" else None,
                       f"buf{len(bufs)}", cat, None))
        bufs.append((bid, size, cat))
        return len(bufs) - 1

    for i in range(60):
        new_buffer(rnd.choice(("memfd", "dmabuf")), rnd.randint(1, 64) * MiB, rnd.choice(("GRAPHICS", "MULTIMEDIA", "OTHER")))
    huge = new_buffer("dmabuf", U64, "GRAPHICS")
    holds = {(procs[9], huge)}                          # (process row, buffer index)
    for _ in range(40):
        holds.add((rnd.choice(procs[1:9]), rnd.randrange(60)))
    refs = {}
    opened = {"ref": {}, "usage": {}, "cat": {}, "buf": {}}

    def state():
        holders = {}
        for p, b in holds:
            holders.setdefault(b, []).append(p)
        usage = {p: [0, 0, 0, 0, 0] for p in procs}
        for b, ps in holders.items():
            size = bufs[b][1]
            for p in ps:
                u = usage[p]
                u[0] += size
                u[1] += size // len(ps)
                u[2] += size if len(ps) == 1 else 0
                u[3] += 1
        cats = {}
        for b in holders:
            c = cats.setdefault(bufs[b][2], [0, 0])
            c[0] += bufs[b][1]
            c[1] += 1
        ref = {}
        for p, b in holds:
            key = (p, b)
            if key not in refs:
                refs[key] = insert(con, "refs", "process, buffer, fds, vmas", (p, bufs[b][0], "3", ""))
            ref[refs[key]] = True
        return ({"ref": ref, "usage": {p: tuple(u) for p, u in usage.items() if u[3]},
                 "cat": {c: tuple(v) for c, v in cats.items()},
                 "buf": {bufs[b][0]: True for b in holders}},
                sum(c[0] for c in cats.values()))

    tables = {"ref": ("ref_spans", "ref"), "usage": ("usage_spans", "process, rss, pss, uss, buffers, mapped"),
              "cat": ("category_spans", "category, bytes, buffers"), "buf": ("buffer_spans", "buffer")}

    def apply(cur, sid):
        for name, now in cur.items():
            table, cols = tables[name]
            was = opened[name]
            for key in list(was):
                if key not in now or now[key] != was[key][1]:
                    con.execute(f"UPDATE {table} SET last = ? WHERE rowid = ?", (sid - 1, was[key][0]))
                    del was[key]
            for key, val in now.items():
                if key not in was:
                    vals = (key,) + (val if isinstance(val, tuple) else ())
                    was[key] = (insert(con, table, cols + ", first", vals + (sid,)), val)

    change = sorted(rnd.sample(range(1, n), min(n - 1, n // 300)))
    leak = set(range(5000, n, 5000))
    events = sorted(set(change) | leak)
    marks = [0] + events + [n]
    spans = 0
    for a, b in zip(marks, marks[1:]):
        if a in leak:
            holds.add((procs[0], new_buffer("memfd", 2 * MiB, "OTHER")))
        elif a:
            p, k = rnd.choice(procs[1:9]), rnd.randrange(60)
            holds.symmetric_difference_update({(p, k)})
        cur, held = state()
        apply(cur, a + 1)
        spans += 1
        con.executemany(
            f"INSERT INTO snapshots(id, {SNAPSHOT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            ((i + 1, run, t0 + i * 0.1, None, 1, str(held).encode() if held >= 2 ** 63 else held,
              0, None, len(procs), len(bufs), 0) for i in range(a, b)))
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return {"snapshots": n, "changes": len(events), "buffers": len(bufs)}


def run(args, label, src=benchlib.SRC):
    cmd = [sys.executable, "-m", "memtrack"] + args
    env = dict(os.environ, PYTHONPATH=src)
    t = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    # ru_maxrss of children is the largest so far: a smaller peak than an earlier child's is hidden
    rss = f"{after.ru_maxrss / 1024:.0f} MiB" if after.ru_maxrss > before.ru_maxrss else "<= above"
    last = (r.stderr.strip().splitlines() or [""])[-1]
    print(f"{label:<14} {wall:6.2f} s wall {cpu:6.2f} s cpu  peak RSS {rss:>8}  rc {r.returncode}  "
          f"{last[:100]}", flush=True)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshots", type=int, default=1_000_000)
    ap.add_argument("--keep", metavar="DIR", help="build the history in DIR and leave it there")
    ap.add_argument("--reuse", action="store_true", help="use the history already in --keep DIR")
    ap.add_argument("--src", default=benchlib.SRC, help="the memtrack source tree to time")
    args = ap.parse_args()
    if args.reuse and not args.keep:
        ap.error("--reuse needs --keep DIR")
    d = args.keep or tempfile.mkdtemp(prefix="memtrack-hist-")
    os.makedirs(d, exist_ok=True)
    db = os.path.join(d, "history.db")
    try:
        if not args.reuse:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(db + suffix):
                    os.unlink(db + suffix)
            t = time.perf_counter()
            info = build(db, args.snapshots)
            print(f"built {db}: {info['snapshots']} snapshots, {info['changes']} changes, "
                  f"{info['buffers']} buffers, {os.path.getsize(db) / MiB:.1f} MiB in "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
        src = args.src
        run(["report", db, "-o", os.path.join(d, "report.txt")], "report", src)
        run(["report", db, "--json", "-o", os.path.join(d, "report.json")], "report --json", src)
        try:
            import matplotlib  # noqa: F401
            run(["plot", db, "-o", os.path.join(d, "plot.png")], "plot", src)
            run(["plot", db, "--by", "category", "-o", os.path.join(d, "plot-cat.png")], "plot category", src)
        except ImportError:
            print("plot           skipped: no matplotlib")
        run(["export-trace", db, "-o", os.path.join(d, "trace.json")], "export-trace", src)
        print(f"trace.json: {os.path.getsize(os.path.join(d, 'trace.json')) / MiB:.1f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
