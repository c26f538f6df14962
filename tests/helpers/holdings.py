"""For the tests of holdings memtrack once missed: start a helpers/holdkid.py case, reserve
huge pages for a test and give them back, scan with either backend."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"


@contextmanager
def holdkid(case, *args):
    """The case's process running; yields the pids it printed."""
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "holdkid.py"), case, *args],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        line = p.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError(f"holdkid {case} did not start")
        yield [int(x) for x in line[1:]]
    finally:
        try:
            p.stdin.close()
        except OSError:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        m = re.search(r"^%s:\s+(\d+)" % key, f.read(), re.M)
    return int(m.group(1)) if m else 0


@contextmanager
def huge_pages(n: int):
    """n more free huge pages of the default size for the block (vm.nr_hugepages raised,
    then put back); yields the huge page size, or None where the kernel cannot give them
    (no hugetlb, no root, memory too fragmented): the caller skips."""
    try:
        with open(NR_HUGEPAGES) as f:
            old = int(f.read())
    except OSError:
        yield None
        return
    if meminfo("HugePages_Free") >= n:
        yield meminfo("Hugepagesize") * 1024
        return
    try:
        with open(NR_HUGEPAGES, "w") as f:
            f.write(str(old + n))
    except OSError:
        yield None
        return
    try:
        yield meminfo("Hugepagesize") * 1024 if meminfo("HugePages_Free") >= n else None
    finally:
        with open(NR_HUGEPAGES, "w") as f:
            f.write(str(old))


def procfs_scan(pids, smaps=False):
    from memtrack.procfs import scan
    from memtrack.sources.live import LiveSource
    return scan(LiveSource(), pids=pids, smaps=smaps)


_bpf = []


def bpf_scan(pids, smaps=False):
    """A scan by the BPF backend, or None where it cannot run here."""
    from memtrack import bpf as mbpf
    if not _bpf:
        try:
            _bpf.append(None if mbpf.unavailable() else mbpf.BpfScanner(reuse=False))
        except mbpf.BpfUnavailable:
            _bpf.append(None)
    return _bpf[0].scan(pids=pids, smaps=smaps) if _bpf[0] is not None else None


def comparable(snap, pids):
    from memtrack.json_out import to_dict
    doc = to_dict(snap.restrict(pids=set(pids)))
    return {"buffers": doc["buffers"], "processes": doc["processes"], "totals": doc["totals"]}


def by_name(snap, name):
    got = [b for b in snap.buffers if b.name == name]
    assert len(got) == 1, (name, [b.name for b in snap.buffers])
    return got[0]


def ref_of(snap, pid, bid):
    for r in snap.process_map[pid].refs:
        if r.buffer == bid:
            return r
    return None
