"""Benchmark: the bpf backend against the procfs backend and the minimal C /proc walker
(bench/walk.c), in one run, on the load bench/scan.py uses (bench/load.py: N processes x F
memfds, a tenth shared by groups of 10, four mapped).

    sudo python3 bench/bpf.py [--procs 1000] [--fds 20] [--rounds 7]

Prints medians (ms) of:
  walker        the C walker (bench/walk.c): readlink every fd, fdinfo of buffer fds, maps
  procfs scan   memtrack.procfs.scan(LiveSource()) in this process: /proc to finished Snapshot
  bpf scan      BpfScanner(reuse=False).scan(), object already loaded: the first scan of a
                fresh process (one per round), as the memtrack command runs it
  bpf scan, this process   the same scanner scanning again and again in this bench process,
                after its procfs rounds (this row and procfs scan free the last round's
                snapshot outside the timing): slower than a fresh process's first scan, the
                heap having made and freed a dozen snapshots
  bpf refresh   a reused scanner rescanning, as a top refresh: task_file and iter/task read
                in full, VMAs walked again only for processes whose mm moved (plus the
                rotating verification slice), access verdicts and cmdlines cached; the load
                is static, so the last Snapshot is reused
  bpf changed   the same with a buffer fd opened (or closed) in this process before each
                refresh: that process is parsed again and patched into the last Snapshot
  bpf load      BpfScanner(): open, load, attach (once per process)
  bpf iterators the iterator reads alone (task_file, task_vma, dmabuf, and /proc/sysvipc/shm)
  bpf process   the whole `memtrack --json --backend bpf` process (to /dev/null; the console
                script next to this python, else python3 -m memtrack)
  bpf process, no preload   the same with MEMTRACK_PRELOAD=0: the BPF object loaded after
                the imports instead of beside them (memtrack/_preload.py)
  procfs process the same with --backend procfs
and the ratios the issue asks for. The machine's speed drifts during a run (on a shared VM
by 10-20% within minutes), so the rows run in fresh processes (the bpf scans and the
process rows) run in turn with the walker, round by round, and their ratios are to the walker's
median in those same rounds (printed beside them); the other ratios are to the first
walker row. Needs root, gcc; the bpf rows need the bpf backend.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from benchlib import SRC, build_walker, timed  # noqa: E402 (puts src/ on sys.path)


FIRST_SCAN = r"""
import time
from memtrack import bpf
scanner = bpf.BpfScanner(reuse=False)
t = time.perf_counter()
scanner.scan()
print((time.perf_counter() - t) * 1e3)
"""


def interleaved(walker: str, runs: dict, rounds: int, own: bool = False) -> dict:
    """Medians (ms) of each of `runs` ({label: (command, env)}) and of the walker, run in turn,
    round after round (one round of warm-up first): the machine's speed drifts over a
    bench run, a ratio is only fair between figures taken at the same time. own: the
    command prints its own figure (ms) rather than being timed whole."""
    times = {label: [] for label in ("walker", *runs)}
    for _ in range(1 + rounds):
        out = subprocess.run([walker], capture_output=True, text=True, check=True).stdout.split()
        times["walker"].append(float(out[2]))
        for label, (cmd, env) in runs.items():
            if own:
                times[label].append(float(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                                         text=True).stdout))
            else:
                times[label].append(timed(lambda: subprocess.run(
                    cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                    check=True), 1)[0])
    return {label: statistics.median(ts[1:]) for label, ts in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--fds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    from memtrack import bpf as mbpf
    from memtrack.bpf.reads import resolved
    from memtrack.procfs import scan
    from memtrack.sources.live import LiveSource

    from load import Load
    walker = build_walker()
    with Load(procs=args.procs, per_proc=args.fds) as load:
        print(f"load: {args.procs} processes x {args.fds} memfds; {os.cpu_count()} CPUs; "
              f"kernel {os.uname().release}")
        kids = set(load.pids)
        rows = {}
        walkers = {}       # row -> the walker's median in the rounds interleaved with it
        walk = []
        for _ in range(args.rounds):
            out = subprocess.run([walker], capture_output=True, text=True, check=True).stdout.split()
            walk.append(float(out[2]))
        rows["walker"] = statistics.median(walk)
        print(f"  walker saw {out[0]} buffer fds, read {out[1]} bytes")

        snap = None

        def procfs():
            nonlocal snap
            snap = scan(LiveSource())

        def drop():
            # the last scan's snapshot is freed outside the timing: a scan's time is making
            # its own snapshot (a one-shot command never frees one)
            nonlocal snap, bsnap
            snap = bsnap = None
        bsnap = None
        rows["procfs scan"], _ = timed(procfs, args.rounds, drop)
        nb = sum(b.fd_refs for b in snap.buffers)
        print(f"  procfs snapshot: {len(snap.buffers)} buffers, {nb} fd refs, "
              f"{sum(b.map_refs for b in snap.buffers)} map refs, {len(snap.processes)} processes")

        # child processes as a user runs them: imports from cached bytecode
        # (PYTHONDONTWRITEBYTECODE, set in some sandboxes, would compile every module on every
        # run), the checkout's src/ first
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPATH"] = SRC
        why = mbpf.unavailable()
        if why:
            print(f"bpf backend unavailable: {why}")
        else:
            rows["bpf load"], _ = timed(lambda: mbpf.BpfScanner().close(), 3)
            cold = mbpf.BpfScanner(reuse=False)

            def bpf_cold():
                nonlocal bsnap
                bsnap = cold.scan()
            keep = snap
            # the first scan of a process that has just loaded the object: what a memtrack
            # command does, and top's or serve's first scan (before their refreshes)
            first = [sys.executable, "-c", FIRST_SCAN]
            got = interleaved(walker, {"bpf scan": (first, env)}, args.rounds, own=True)
            walkers["bpf scan"] = got.pop("walker")
            rows.update(got)
            rows["bpf scan, this process"], _ = timed(bpf_cold, args.rounds, drop)
            snap = keep
            same = bsnap.restrict(pids=kids).buffers == snap.restrict(pids=kids).buffers
            print(f"  bpf snapshot: {len(bsnap.buffers)} buffers; the load's buffers identical "
                  f"to procfs's: {same}")
            # where the time goes, one cold scan (the GC paused, as scan() does); here the
            # reads are waited for, where scan() parses the files while task_vma walks

            def read_all():
                raw = cold._read()
                return raw._replace(vmas=resolved(raw.vmas))
            import gc
            from memtrack.build import build as build_snap
            gc.disable()
            t0 = time.perf_counter()
            raw = read_all()
            t1 = time.perf_counter()
            obs = cold.collect(raw=raw)
            t2 = time.perf_counter()
            build_snap(obs, taken_at="", source="live", backend="bpf")
            t3 = time.perf_counter()
            gc.enable()
            rows["bpf iterators"] = statistics.median(timed(read_all, args.rounds)[1])
            print(f"  bpf scan breakdown: iterator reads {(t1 - t0) * 1e3:.1f} ms, parse + "
                  f"access checks + cmdlines {(t2 - t1) * 1e3:.1f} ms, build {(t3 - t2) * 1e3:.1f} ms "
                  f"({len(raw[0]) + len(raw[1])} bytes of records)")
            cold.close()
            warm = mbpf.BpfScanner()
            warm.scan()
            rows["bpf refresh"], _ = timed(warm.scan, args.rounds)
            print(f"  bpf refresh: VMAs walked again for {len(warm.walked or ())} processes, "
                  f"carried over for {warm.reused_vmas}")

            held = []

            def changed():
                # this process opens a memfd or closes the one it opened: its records move
                if held:
                    os.close(held.pop())
                else:
                    held.append(os.memfd_create("bench-change"))
                t = time.perf_counter()
                warm.scan()
                return (time.perf_counter() - t) * 1e3
            rows["bpf changed"] = statistics.median([changed() for _ in range(max(args.rounds, 10))])
            print(f"  bpf changed: patched snapshots {warm._rebuilder.partial_builds}, whole builds "
                  f"{warm._rebuilder.full_builds}")
            for fd in held:
                os.close(fd)
            warm.close()
        # the command users run: the console script beside this interpreter (it imports the
        # checkout's src/, first on PYTHONPATH), else python -m memtrack
        script = os.path.join(os.path.dirname(sys.executable), "memtrack")
        command = [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "memtrack"]
        print(f"  processes: {' '.join(command)} --json -q --backend ...")
        runs = {}
        for backend, extra in (("bpf", {}), ("bpf", {"MEMTRACK_PRELOAD": "0"}), ("procfs", {})):
            if backend == "bpf" and why:
                continue
            label = f"{backend} process" + (", no preload" if extra else "")
            runs[label] = (command + ["--json", "-q", "--backend", backend], dict(env, **extra))
        got = interleaved(walker, runs, args.rounds)
        for label in runs:
            walkers[label] = got["walker"]
        rows.update((k, v) for k, v in got.items() if k != "walker")
        print()
        for k, v in rows.items():
            print(f"  {k:<23} {v:8.1f} ms")
        print()
        for k, target in (("bpf scan", 5),
                          ("bpf scan, this process", None), ("bpf process", 2),
                          ("bpf process, no preload", None), ("bpf iterators", None),
                          ("procfs scan", None)):
            if k in rows:
                t = f" (target >= {target}x)" if target else ""
                wk = walkers.get(k, rows["walker"])
                beside = f"  (walker beside it: {wk:.1f} ms)" if k in walkers else ""
                print(f"  walker / {k:<23} {wk / rows[k]:6.2f}x{t}{beside}")
        for k in ("bpf refresh", "bpf changed"):
            if k in rows:
                print(f"  {k} {rows[k]:.1f} ms (target < 20 ms)")


if __name__ == "__main__":
    main()
