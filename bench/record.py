#!/usr/bin/env python3
"""How big a recorded history grows: bytes per snapshot for `memtrack record`.

Starts N processes holding memfds (as bench/top.py) plus one that churns (creates and frees
a memfd every 50 ms) and one that leaks one every 200 ms, records S snapshots back to back
with the same code `memtrack record` runs, and prints the database size per snapshot, the
marginal size of the second half (the steady state), and that rate over a day at 1 s. For
scale it also prints the size of one JSON snapshot of the same machine.

    python3 bench/record.py [--procs 300] [--snapshots 400] [--interval 0]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
sys.path.insert(0, HERE)

from top import spawn  # noqa: E402

from memtrack.history import Recorder  # noqa: E402
from memtrack.incremental import IncrementalScanner  # noqa: E402
from memtrack.json_out import to_json  # noqa: E402

LOOP = r"""
import os, sys, time
mode, period = sys.argv[1], float(sys.argv[2])
held = []
while True:
    fd = os.memfd_create(mode, 0)
    os.ftruncate(fd, 65536)
    if mode == "leak":
        held.append(fd)
    else:
        time.sleep(period / 2)
        os.close(fd)
    time.sleep(period / 2)
"""


def db_size(path):
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=300)
    ap.add_argument("--snapshots", type=int, default=400)
    ap.add_argument("--interval", type=float, default=0.0,
                    help="seconds between snapshots (0: back to back; the churner then changes "
                         "something only every few snapshots, at 1 s it changes every one)")
    args = ap.parse_args()
    kids = spawn(args.procs)
    loops = [subprocess.Popen([sys.executable, "-c", LOOP, "churn", "0.05"]),
             subprocess.Popen([sys.executable, "-c", LOOP, "leak", "0.2"])]
    d = tempfile.mkdtemp(prefix="memtrack-bench-")
    db = os.path.join(d, "history.db")
    try:
        time.sleep(0.5)
        sc = IncrementalScanner()
        rec = Recorder(db, interval=0)
        half = args.snapshots // 2
        t = time.perf_counter()
        size_half = None
        for i in range(args.snapshots):
            if i and args.interval:
                time.sleep(args.interval)
            snap = sc.refresh()
            rec.add(snap)
            if i + 1 == half:
                rec.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                size_half = db_size(db)
        secs = time.perf_counter() - t
        rec.close()
        size = db_size(db)
        json_bytes = len(to_json(snap, indent=None).encode())
        per = size / args.snapshots
        marginal = (size - size_half) / (args.snapshots - half)
        print(f"machine: {len(snap.processes)} processes holding {len(snap.buffers)} buffers "
              f"({args.procs} bench processes, one churning every 50 ms, one leaking every 200 ms)")
        print(f"{args.snapshots} snapshots, interval {args.interval} s, in {secs:.1f} s")
        print(f"database: {size} bytes = {per:.0f} bytes per snapshot "
              f"(steady state, second half: {marginal:.0f} bytes per snapshot)")
        print(f"a day at 1 s at the steady-state rate: {marginal * 86400 / 2**20:.1f} MiB")
        print(f"for scale, one JSON snapshot of the same machine: {json_bytes} bytes")
    finally:
        for p in loops:
            p.kill()
            p.wait()
        for k in kids:
            k.kill()
        for k in kids:
            k.wait()
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)


if __name__ == "__main__":
    main()
