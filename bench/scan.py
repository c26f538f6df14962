#!/usr/bin/env python3
"""Benchmark: a full live scan against the minimal /proc walk, on a load of real processes.

    python3 bench/scan.py [--procs 1000] [--buffers 20] [--runs 5]

Prints the median of each, the ratio scan / minimal walk (target: <= 1.5), the whole
`memtrack --json` process, and the scan's peak memory. Run as root to see every process.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
sys.path.insert(0, SRC)
sys.path.insert(0, HERE)

import memtrack  # noqa: E402
from load import Load  # noqa: E402


def build_walker(tmp):
    cc = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    if not cc:
        return None
    exe = os.path.join(tmp, "walk")
    subprocess.run([cc, "-O2", "-o", exe, os.path.join(HERE, "walk.c")], check=True)
    return exe


def python_walk():
    """The same minimal walk in plain Python, where no C compiler is present."""
    t = time.perf_counter()
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        base = f"/proc/{p}/fd/"
        try:
            fds = os.listdir(base)
        except OSError:
            fds = []
        for fd in fds:
            try:
                link = os.readlink(base + fd)
            except OSError:
                continue
            if link.startswith(("/memfd:", "/dmabuf:", "/dev/shm/", "/dev/ashmem")) or link == "anon_inode:dmabuf":
                try:
                    with open(f"/proc/{p}/fdinfo/{fd}", "rb") as f:
                        f.read()
                except OSError:
                    pass
        try:
            with open(f"/proc/{p}/maps", "rb") as f:
                f.read()
        except OSError:
            pass
    return (time.perf_counter() - t) * 1e3


def median_ms(fn, runs):
    return statistics.median(fn() for _ in range(runs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--buffers", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="memtrack-bench-")
    walker = build_walker(tmp)
    env = dict(os.environ, PYTHONPATH=SRC)
    print(f"load: {args.procs} processes x {args.buffers} memfds (a tenth shared by groups of 10, "
          f"4 mapped each); {os.cpu_count()} cpus; {'root' if os.geteuid() == 0 else 'not root'}")
    with Load(args.procs, args.buffers) as load:
        if walker:
            def walk():
                out = subprocess.run([walker], capture_output=True, text=True, check=True).stdout.split()
                return float(out[2])
            walk_name = "minimal walk (C, bench/walk.c)"
        else:
            walk, walk_name = python_walk, "minimal walk (Python; no C compiler)"

        def scan():
            t = time.perf_counter()
            memtrack.scan(backend="procfs")
            return (time.perf_counter() - t) * 1e3

        def whole():
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "memtrack", "--json", "-q", "--backend", "procfs"], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return (time.perf_counter() - t) * 1e3

        scan()  # warm the page cache and the dentry cache for both sides
        walk()
        w, s = [], []
        for _ in range(args.runs):               # interleaved, so drift hits both alike
            w.append(walk())
            s.append(scan())
        walk_ms, scan_ms = statistics.median(w), statistics.median(s)
        whole_ms = median_ms(whole, max(3, args.runs // 2))
        snap = memtrack.scan(backend="procfs")
        mine = set(load.pids)
        held = [p for p in snap.processes if p.pid in mine]
        nrefs = sum(len(p.refs) for p in held)
        tracemalloc.start()
        memtrack.scan(backend="procfs")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        child = subprocess.Popen([sys.executable, "-m", "memtrack", "--json", "-q", "--backend", "procfs"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, _, ru = os.wait4(child.pid, 0)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"seen: {len(snap.processes)} processes holding {len(snap.buffers)} buffers "
          f"({len(held)} load processes, {nrefs} references)")
    print(f"{walk_name:<40} {walk_ms:8.1f} ms")
    print(f"{'memtrack.scan() (full live scan)':<40} {scan_ms:8.1f} ms   ratio {scan_ms / walk_ms:.2f}x (target <= 1.5x)")
    print(f"{'memtrack --json --backend procfs':<40} {whole_ms:8.1f} ms   ratio {whole_ms / walk_ms:.2f}x")
    print(f"{'scan peak Python memory (tracemalloc)':<40} {peak / 1048576:8.1f} MiB")
    print(f"{'memtrack --json max RSS':<40} {ru.ru_maxrss / 1024:8.1f} MiB")


if __name__ == "__main__":
    main()
