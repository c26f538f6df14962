#!/usr/bin/env python3
"""Benchmark: how `memtrack --json` grows with the number of references, both backends,
beside the minimal C /proc walker (bench/walk.c) and the BPF iterators' own read time.

    sudo python3 bench/scale.py [--procs 1000] [--sizes 20,100] [--rounds 3]

For each size F, a load of --procs processes holding F memfds each (bench/load.py: a tenth
shared by groups of 10, four mapped) is started, and each row runs in turn with the walker,
round after round (the machine's speed drifts; a ratio is fair only between figures taken
together). Printed per size: the medians (ms), each command's peak RSS (the kernel's
ru_maxrss of the child), and that RSS per reference, also net of the command's RSS on the
bare machine (the load not running), which is what grows.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from benchlib import HERE, SRC, build_walker  # noqa: E402 (puts src/ on sys.path)

# the iterators' reads alone, in a fresh process with the object loaded (ms, best of rounds)
ITERATORS = r"""
import sys, time
from memtrack import bpf
from memtrack.bpf.reads import resolved
s = bpf.BpfScanner(reuse=False)
best = None
for _ in range(int(sys.argv[1])):
    t = time.perf_counter()
    raw = s._read()
    raw._replace(vmas=resolved(raw.vmas))
    ms = (time.perf_counter() - t) * 1e3
    best = ms if best is None else min(best, ms)
print(best)
"""


def run_child(cmd, env):
    """(wall ms, peak RSS in bytes) of one child process, its output discarded."""
    t = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(child.pid, 0)
    ms = (time.perf_counter() - t) * 1e3
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (status {status})")
    return ms, ru.ru_maxrss * 1024


def count_refs(pids) -> int:
    """References the load holds (fds plus shared mappings), counted from /proc itself."""
    n = 0
    for pid in pids:
        n += sum(1 for fd in os.listdir(f"/proc/{pid}/fd")
                 if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:"))
        with open(f"/proc/{pid}/maps") as f:
            n += sum(1 for line in f if "/memfd:" in line)
    return n


def measure(walker, commands, rounds, iter_rounds, env):
    times = {k: [] for k in ("walker", *commands)}
    rss = {k: 0 for k in commands}
    for i in range(1 + rounds):              # round 0 warms the caches and is dropped
        out = subprocess.run([walker], capture_output=True, text=True, check=True).stdout.split()
        if i:
            times["walker"].append(float(out[2]))
        for label, cmd in commands.items():
            ms, peak = run_child(cmd, env)
            if i:
                times[label].append(ms)
            rss[label] = max(rss[label], peak)
    med = {k: statistics.median(v) for k, v in times.items()}
    if iter_rounds:
        out = subprocess.run([sys.executable, "-c", ITERATORS, str(iter_rounds)], env=env,
                             capture_output=True, text=True)
        if out.returncode == 0:
            med["bpf iterators"] = float(out.stdout)
    return med, rss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--sizes", default="20,100", help="memfds per process, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the scans must see every process")
    sys.path.insert(0, HERE)
    from load import Load
    from memtrack import bpf
    walker = build_walker()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = SRC
    script = os.path.join(os.path.dirname(sys.executable), "memtrack")
    base = [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "memtrack"]
    why = bpf.unavailable()
    backends = ["procfs"] + ([] if why else ["bpf"])
    commands = {f"{b} --json": base + ["--json", "-q", "--backend", b] for b in backends}
    print(f"{os.cpu_count()} CPUs, kernel {os.uname().release}; command: {' '.join(base)} --json -q "
          f"--backend ...{'' if not why else f'; bpf unavailable: {why}'}")
    _, bare_rss = measure(walker, commands, 1, 0, env)
    print("bare machine peak RSS: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in bare_rss.items()))
    for f in (int(x) for x in args.sizes.split(",")):
        with Load(procs=args.procs, per_proc=f) as load:
            refs = count_refs(load.pids)
            med, rss = measure(walker, commands, args.rounds, 0 if why else 5, env)
        print(f"\n{args.procs} processes x {f} memfds: {refs} references")
        print(f"  {'walker (C)':<22} {med['walker']:8.1f} ms")
        if "bpf iterators" in med:
            print(f"  {'bpf iterators':<22} {med['bpf iterators']:8.1f} ms   walker / it "
                  f"{med['walker'] / med['bpf iterators']:.2f}x")
        for k in commands:
            net = (rss[k] - bare_rss[k]) / refs
            line = (f"  {k:<22} {med[k]:8.1f} ms   {med[k] / med['walker']:.2f}x the walker   "
                    f"peak RSS {rss[k] / 2**20:6.1f} MiB ({rss[k] / refs:6.0f} B/ref, {net:5.0f} B/ref net)")
            if k.startswith("bpf") and "bpf iterators" in med:
                line += f"   {med[k] / med['bpf iterators']:.2f}x the iterators"
            print(line)


if __name__ == "__main__":
    main()
