"""Benchmark: the bpf backend against the procfs backend and a minimal C /proc walker, in
one run, on N processes x F memfds (a tenth shared, a quarter of the rest mapped).

    sudo python3 bench/bpf.py [--procs 1000] [--fds 20] [--rounds 7]

Prints medians (ms) of:
  walker        the C walker (bench/walker.c): readlink every fd, fdinfo of buffer fds, maps
  procfs scan   memtrack.scan.scan(LiveSource()) in this process: /proc to finished Snapshot
  bpf scan      BpfScanner.scan(), object already loaded (as top/serve), cold cmdline cache
  bpf refresh   the same scanner rescanning, as a top refresh (cmdlines cached)
  bpf load      BpfScanner(): open, load, attach (once per process)
  bpf process   the whole `python3 -m memtrack --json --backend bpf` process (to /dev/null)
  procfs process the same with --backend procfs
and the ratios the issue asks for. Needs root, gcc; the bpf rows need the bpf backend.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "src")
OUT = os.path.join(HERE, "out")
sys.path.insert(0, SRC)


def build(name):
    exe = os.path.join(OUT, name)
    src = os.path.join(HERE, name + ".c")
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
        os.makedirs(OUT, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe


def timed(fn, rounds):
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--fds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    from memtrack import bpf as mbpf
    from memtrack.scan import scan
    from memtrack.sources.live import LiveSource

    load = subprocess.Popen([build("load"), str(args.procs), str(args.fds)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = load.stdout.readline()
        if not line.startswith("ready"):
            sys.exit("bench: the load did not start")
        print(f"load: {args.procs} processes x {args.fds} memfds (pid {load.pid}); "
              f"{os.cpu_count()} CPUs; kernel {os.uname().release}")
        rows = {}
        w = subprocess.run([build("walker"), str(args.rounds)], capture_output=True, text=True,
                           check=True).stdout.split()
        walk = [float(x) for x in w[0::4]]
        rows["walker"] = statistics.median(walk)
        print(f"  walker saw {w[1]} fds, {w[2]} buffer fds, {w[3]} buffer maps")

        snap = None

        def procfs():
            nonlocal snap
            snap = scan(LiveSource())
        rows["procfs scan"], _ = timed(procfs, args.rounds)
        nb = sum(b.fd_refs for b in snap.buffers)
        print(f"  procfs snapshot: {len(snap.buffers)} buffers, {nb} fd refs, "
              f"{sum(b.map_refs for b in snap.buffers)} map refs, {len(snap.processes)} processes")

        why = mbpf.unavailable()
        if why:
            print(f"bpf backend unavailable: {why}")
        else:
            rows["bpf load"], _ = timed(lambda: mbpf.BpfScanner().close(), 3)
            cold = mbpf.BpfScanner(cache_cmdline=False)
            bsnap = None

            def bpf_cold():
                nonlocal bsnap
                bsnap = cold.scan()
            rows["bpf scan"], _ = timed(bpf_cold, args.rounds)
            same = [b for b in bsnap.buffers] == [b for b in snap.buffers]
            print(f"  bpf snapshot: {len(bsnap.buffers)} buffers; same buffers as procfs: {same}")
            # where the time goes, one cold scan
            t0 = time.perf_counter()
            for name in ("task_file", "task_vma", "dmabuf"):
                if name != "dmabuf" or cold.has_dmabuf:
                    cold._obj.read(name)
            t1 = time.perf_counter()
            obs = cold.collect()
            t2 = time.perf_counter()
            from memtrack.build import build as build_snap
            build_snap(obs, taken_at="", source="live", backend="bpf")
            t3 = time.perf_counter()
            print(f"  bpf scan breakdown: iterator reads {(t1 - t0) * 1e3:.1f} ms, "
                  f"reads+parse+cmdlines {(t2 - t1) * 1e3:.1f} ms, build {(t3 - t2) * 1e3:.1f} ms")
            cold.close()
            warm = mbpf.BpfScanner()
            warm.scan()
            rows["bpf refresh"], _ = timed(warm.scan, args.rounds)
            warm.close()
        env = dict(os.environ, PYTHONPATH=SRC)
        for backend in ("bpf", "procfs"):
            if backend == "bpf" and why:
                continue
            cmd = [sys.executable, "-m", "memtrack", "--json", "-q", "--backend", backend]
            rows[f"{backend} process"], _ = timed(
                lambda: subprocess.run(cmd, stdout=subprocess.DEVNULL, env=env, check=True),
                max(3, args.rounds // 2))
        print()
        for k, v in rows.items():
            print(f"  {k:<15} {v:8.1f} ms")
        print()
        wk = rows["walker"]
        for k, target in (("bpf scan", 5), ("bpf process", 2), ("procfs scan", None)):
            if k in rows:
                t = f" (target >= {target}x)" if target else ""
                print(f"  walker / {k:<12} {wk / rows[k]:6.2f}x{t}")
        if "bpf refresh" in rows:
            print(f"  bpf refresh {rows['bpf refresh']:.1f} ms (target < 20 ms)")
    finally:
        load.stdin.close()
        load.wait()


if __name__ == "__main__":
    main()
