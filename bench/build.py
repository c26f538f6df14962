"""Benchmark: the Python half of a scan alone, this tree against another revision, in one
process, on observations collected once from the load of bench/load.py.

    sudo python3 bench/build.py [--procs 1000] [--fds 20] [--rounds 15] [--ref main]

Times, interleaved (the GC paused, as scans do): build() on the procfs backend's and the
bpf backend's observations, and the bpf record parsers (parse_files, parse_vmas) on the
iterators' bytes. The revision's src/memtrack is imported as the package memtrack_ref;
each pair must give the same result (compared by repr: the classes differ). Prints the
median and the fastest round of each, in ms.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, HERE)


def import_revision(rev: str, tmp: str):
    """rev's memtrack package, as memtrack_ref (its imports are relative)."""
    tar = subprocess.run(["git", "-C", ROOT, "archive", rev, "src/memtrack"], check=True,
                         capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=tar, check=True)
    os.rename(os.path.join(tmp, "src", "memtrack"), os.path.join(tmp, "memtrack_ref"))
    sys.path.insert(0, tmp)
    return importlib.import_module("memtrack_ref")


def race(pairs, rounds):
    """{label: [ms, ...]} for each (label, fn) in pairs, run alternately."""
    times = {label: [] for label, _ in pairs}
    for _ in range(rounds):
        for label, fn in pairs:
            t = time.perf_counter()
            out = fn()
            times[label].append((time.perf_counter() - t) * 1e3)
            del out                    # freeing the last result is not part of the next run
    return times


def report(title, times):
    print(title)
    for label, ts in times.items():
        print(f"  {label:<8} median {statistics.median(ts):7.1f} ms   fastest {min(ts):7.1f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--fds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--ref", default="main", help="the revision to compare with (default: main)")
    args = ap.parse_args()

    from memtrack import bpf as mbpf
    from memtrack.build import build
    from memtrack.bpf import records
    from memtrack.bpf.reads import resolved
    from memtrack.procfs import collect
    from memtrack.sources.live import LiveSource
    from load import Load

    tmp = tempfile.mkdtemp(prefix="memtrack-bench-build-")
    try:
        ref = import_revision(args.ref, tmp)
        ref_build = importlib.import_module("memtrack_ref.build").build
        ref_records = importlib.import_module("memtrack_ref.bpf.records")
        why = mbpf.unavailable()
        with Load(procs=args.procs, per_proc=args.fds):
            observed = {"procfs": collect(LiveSource())}
            if not why:
                with mbpf.BpfScanner() as scanner:
                    raw = scanner._read()
                    observed["bpf"] = scanner.collect(raw=raw)
        print(f"load: {args.procs} processes x {args.fds} memfds; this tree against {args.ref} "
              f"({ref.__file__}); {os.cpu_count()} CPUs")
        if why:
            print(f"bpf backend unavailable ({why}): procfs observations only")
        gc.disable()
        for backend, obs in observed.items():
            def mine(obs=obs):
                return build(obs, taken_at="", source="live", backend=backend)

            def theirs(obs=obs):
                return ref_build(obs, taken_at="", source="live", backend=backend)
            same = repr(mine()) == repr(theirs())
            print(f"{backend}: {len(obs.fds)} fd refs, {len(obs.maps)} map refs -> "
                  f"{len(mine().buffers)} buffers; the same snapshot as {args.ref}: {same}")
            report(f"build() on the {backend} backend's observations",
                   race([("this", mine), (args.ref, theirs)], args.rounds))
        if "bpf" in observed:
            # a reused scanner (the default) reads task_file per pid and task_vma in a thread
            files, vmas = raw.files, resolved(raw.vmas)
            if isinstance(files, dict):
                files = b"".join(files[pid] for pid in sorted(files))

            def parse(mod):
                def run():
                    tasks, fds, maps = {}, [], []
                    mod.parse_files(files, tasks, fds, [])
                    mod.parse_vmas(vmas, tasks, maps, set())
                    return tasks, fds, maps
                return run
            same = repr(parse(records)()[1:]) == repr(parse(ref_records)()[1:])
            print(f"bpf records: {len(files) // records.FD_REC.size} file, "
                  f"{len(vmas) // records.VMA_REC.size} vma; the same observations as {args.ref}: {same}")
            report("parse_files + parse_vmas",
                   race([("this", parse(records)), (args.ref, parse(ref_records))], args.rounds))
        gc.enable()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
