"""Benchmark: what `memtrack --json` spends after the scan, and the whole process, on the load
bench/bpf.py uses (bench/load.py: N processes x F memfds, a tenth shared by groups of 10).

    sudo python3 bench/json_out.py [--procs 1000] [--fds 20] [--rounds 7] [--base REF] [--pyc]

Scans once (the bpf backend where it runs, else procfs), then prints medians (ms) of:
  categorize     the shipped rules on the fresh snapshot (as the CLI applies them)
  account        account() of the categorized snapshot
  to_dict+dumps  the generic path: json.dumps(to_dict(snap), compact)
  to_json        to_json(Snapshot): json_out's writer (the same bytes, checked here)
  python start   `python3 -c pass`, the floor under every process below
  --help         `python3 -m memtrack --help`: start-up and every import the parser needs
  bpf process    the whole `python3 -m memtrack --json -q --backend bpf` (to /dev/null)
  procfs process the same with --backend procfs
With --base REF (a git ref, e.g. main), the same processes run from REF's src/ (exported to
bench/out/base-REF), interleaved with this tree's, and the ratios are printed. Processes run
with the environment as it is; PYTHONDONTWRITEBYTECODE=1 means every module is compiled at
each start. --pyc runs them with bytecode cached (in bench/out/pycache), as an install does.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from benchlib import OUT, ROOT, SRC, timed as _timed  # noqa: E402 (puts src/ on sys.path)


def timed(fn, rounds):
    return _timed(fn, rounds)[0]


def export(ref: str) -> str:
    """REF's src/ as a directory, for PYTHONPATH."""
    dest = os.path.join(OUT, "base-" + ref.replace("/", "_"))
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    tar = subprocess.run(["git", "-C", ROOT, "archive", ref, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=tar, check=True)
    return os.path.join(dest, "src")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--fds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--base", metavar="REF", help="also time the processes from this git ref's src/")
    ap.add_argument("--pyc", action="store_true", help="processes with bytecode cached, as installed")
    args = ap.parse_args()

    from memtrack import bpf as mbpf
    from memtrack.account import account
    from memtrack.categories import categorize, load_rules
    from memtrack.json_out import to_dict, to_json
    from memtrack.procfs import scan
    from memtrack.sources.live import LiveSource
    from load import Load

    trees = {"this": SRC}
    if args.base:
        trees["base"] = export(args.base)
    env = dict(os.environ)
    if args.pyc:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(OUT, "pycache")
    bc = "compiled at each start" if env.get("PYTHONDONTWRITEBYTECODE") else "bytecode cached"
    why = mbpf.unavailable()
    rows = {}
    with Load(procs=args.procs, per_proc=args.fds):
        print(f"load: {args.procs} processes x {args.fds} memfds; {os.cpu_count()} CPUs; "
              f"kernel {os.uname().release}; Python {sys.version.split()[0]}; modules {bc}")
        gc.disable()
        if why:
            print(f"bpf backend unavailable ({why}): scanning with procfs")
            raw = scan(LiveSource())
        else:
            scanner = mbpf.BpfScanner()
            raw = scanner.scan()
            scanner.close()
        gc.enable()
        rules = load_rules(use_user_file=False)
        snap = categorize(raw, rules)
        print(f"snapshot: {len(snap.buffers)} buffers, {len(snap.processes)} processes, "
              f"{len(to_json(snap)) / 1e6:.1f} MB of JSON")
        old = json.dumps(to_dict(snap), ensure_ascii=False, separators=(",", ":"))
        assert to_json(snap) == old, "to_json differs from json.dumps(to_dict())"
        gc.freeze()                         # as the CLI runs them: the snapshot frozen
        rows["categorize"] = timed(lambda: categorize(raw, rules), args.rounds)
        rows["account"] = timed(lambda: account(snap), args.rounds)
        gc.disable()                        # as to_json runs
        rows["to_dict+dumps"] = timed(
            lambda: json.dumps(to_dict(snap), ensure_ascii=False, separators=(",", ":")), args.rounds)
        gc.enable()
        rows["to_json"] = timed(lambda: to_json(snap), args.rounds)
        gc.unfreeze()

        procs = {"python start": ["-c", "pass"], "--help": ["-m", "memtrack", "--help"]}
        for backend in ("bpf", "procfs"):
            if not (backend == "bpf" and why):
                procs[f"{backend} process"] = ["-m", "memtrack", "--json", "-q", "--backend", backend]
        samples = {}
        for tree, src in trees.items():       # warm-up, and the bytecode cache with --pyc
            subprocess.run([sys.executable, "-m", "memtrack", "--help"], stdout=subprocess.DEVNULL,
                           env=dict(env, PYTHONPATH=src), check=True)
        for _ in range(max(3, args.rounds)):
            for name, argv in procs.items():
                for tree, src in trees.items():
                    if name == "python start" and tree != "this":
                        continue
                    t = time.perf_counter()
                    subprocess.run([sys.executable] + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env=dict(env, PYTHONPATH=src), check=True)
                    samples.setdefault((name, tree), []).append((time.perf_counter() - t) * 1e3)
    print()
    for k, v in rows.items():
        print(f"  {k:<15} {v:8.1f} ms")
    print(f"  {'old / new JSON':<15} {rows['to_dict+dumps'] / rows['to_json']:8.2f}x")
    print()
    for (name, tree), v in samples.items():
        label = name if tree == "this" else f"{name} ({args.base})"
        print(f"  {label:<28} {statistics.median(v):8.1f} ms")
    if args.base:
        print()
        for name in procs:
            if (name, "base") in samples:
                a, b = statistics.median(samples[(name, "base")]), statistics.median(samples[(name, "this")])
                print(f"  {name:<15} {args.base} / this {a / b:6.2f}x  ({a - b:+.1f} ms saved)")


if __name__ == "__main__":
    main()
