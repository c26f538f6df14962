#!/usr/bin/env python3
"""Full scan vs incremental refresh (what `memtrack top` and `record` pay per frame).

Starts N processes (`sleep`, each inheriting its own memfd; every tenth also a shared one),
then times a full scan of the machine and a steady-state refresh of IncrementalScanner,
both with its default rotating verification and with signatures only, and a refresh after
one process (this one) opened a memfd: re-read, and patched into the last snapshot.

    python3 bench/top.py [--procs 1000] [--repeat 7]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import timed  # noqa: E402 (puts src/ on sys.path)

from memtrack.incremental import IncrementalScanner  # noqa: E402
from memtrack.build import build  # noqa: E402
from memtrack.procfs import collect, scan  # noqa: E402
from memtrack.sources.live import LiveSource  # noqa: E402


def spawn(n: int, extra_fds: int = 0):
    kids = []
    pipes = [os.pipe() for _ in range((extra_fds + 1) // 2)]
    extra = tuple(fd for pair in pipes for fd in pair)[:extra_fds]
    shared = os.memfd_create("bench-shared", 0)
    os.ftruncate(shared, 1 << 20)
    try:
        for i in range(n):
            fd = os.memfd_create(f"bench-{i}", 0)
            os.ftruncate(fd, 4096 * (1 + i % 16))
            fds = ((fd, shared) if i % 10 == 0 else (fd,)) + extra
            kids.append(subprocess.Popen(["sleep", "3600"], pass_fds=fds, stdin=subprocess.DEVNULL))
            os.close(fd)
    finally:
        os.close(shared)
        for pair in pipes:
            for fd in pair:
                os.close(fd)
    return kids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--extra-fds", type=int, default=0,
                    help="pipe fds each process also holds (real processes hold dozens)")
    args = ap.parse_args()
    kids = spawn(args.procs, args.extra_fds)
    try:
        time.sleep(0.5)
        snap = scan(LiveSource())
        mine = {k.pid for k in kids}
        held = sum(1 for p in snap.processes if p.pid in mine)
        print(f"bench processes: {args.procs}, each holding 1 memfd (+1 shared every tenth) "
              f"and {args.extra_fds} pipe fds")
        print(f"machine: {len(os.listdir('/proc'))} /proc entries, {len(snap.processes)} processes "
              f"holding {len(snap.buffers)} buffers ({held} of the {args.procs} bench processes)")
        full, _ = timed(lambda: scan(LiveSource()), args.repeat)
        t = time.perf_counter()
        obs = collect(LiveSource())
        t_read = time.perf_counter() - t
        t = time.perf_counter()
        build(obs, taken_at="", source="live")
        t_build = time.perf_counter() - t
        print(f"  of a full scan: reading {t_read * 1000:.1f} ms, building the snapshot {t_build * 1000:.1f} ms "
              "(a refresh that finds a change rebuilds only what it touches)")
        results = {"full scan": full}
        for label, k in (("refresh (verify_every=30, default)", 30), ("refresh (signatures only)", 0)):
            sc = IncrementalScanner(verify_every=k)
            sc.refresh()
            med, _ = timed(sc.refresh, max(args.repeat, k and 30 or 0))
            results[label] = med
            print(f"  last refresh: {sc.stats.reread} re-read, {sc.stats.reused} reused "
                  f"of {sc.stats.processes}")
        sc = IncrementalScanner(verify_every=30)
        sc.refresh()

        held = []

        def changed():
            # this process opens a memfd or closes the one it opened (its fd count moves
            # each time): it is re-read and patched in
            if held:
                os.close(held.pop())
            else:
                held.append(os.memfd_create("bench-change", 0))
            sc.refresh()
        results["refresh, one process changed"], _ = timed(changed, max(args.repeat, 30))
        for fd in held:
            os.close(fd)
        print(f"  patched snapshots: {sc._rebuilder.partial_builds}, whole builds: "
              f"{sc._rebuilder.full_builds}")
        for label, t in results.items():
            print(f"{label:36s} {t:8.1f} ms  ({t * 1e3 / max(1, len(os.listdir('/proc'))):6.1f} us/process)")
        for label, t in results.items():
            if label != "full scan":
                print(f"ratio full / {label}: {full / t:.1f}x")
    finally:
        for k in kids:
            k.kill()
        for k in kids:
            k.wait()


if __name__ == "__main__":
    main()
