"""What /proc itself says about shared buffers, worked out the plain way, for the tests that
run real third-party software (PostgreSQL, weston) and compare memtrack with it.

Every process's maps (shared mappings) and fd links are read; a buffer is (kind, dev, inode)
as the kernel prints it; its size and allocated bytes come from a stat of the object itself
(/proc/PID/map_files/START-END or /proc/PID/fd/N: st_size, st_blocks * 512), a SysV
segment's from /proc/sysvipc/shm (size; rss + swap). Root only (map_files)."""
from __future__ import annotations

import os
from typing import Dict, NamedTuple, Optional, Set, Tuple

Key = Tuple[str, Optional[str], int]          # (kind, dev, inode); dev None for sysv


class Fact(NamedTuple):
    size: int
    allocated: Optional[int]
    holders: frozenset
    fds: int
    maps: int


def kind_of(path: str) -> Optional[str]:
    if path.startswith("/memfd:"):
        return "memfd"
    if path.startswith("/dev/shm/"):
        return "shm"
    if path.startswith("/SYSV") and path.endswith(" (deleted)"):
        return "sysv"
    if path == "/dev/zero (deleted)":
        return "shmem"                    # MAP_SHARED | MAP_ANONYMOUS
    return None


def sysv_table() -> Dict[int, Tuple[int, int]]:
    """shmid -> (size, rss + swap)."""
    out = {}
    with open("/proc/sysvipc/shm") as f:
        head = f.readline().split()
        for line in f:
            row = dict(zip(head, line.split()))
            out[int(row["shmid"])] = (int(row["size"]), int(row["rss"]) + int(row["swap"]))
    return out


def pids():
    return sorted(int(n) for n in os.listdir("/proc") if n.isdigit())


def facts() -> Dict[Key, Fact]:
    """Every buffer any process holds by a shared mapping or an fd, as /proc shows it now.
    A process that exits meanwhile is left out."""
    holders: Dict[Key, Set[int]] = {}
    fds: Dict[Key, int] = {}
    maps: Dict[Key, int] = {}
    stats: Dict[Key, Tuple[int, Optional[int]]] = {}
    sysv = sysv_table()

    def note(key, pid, st=None):
        holders.setdefault(key, set()).add(pid)
        if key[0] == "sysv":
            size, alloc = sysv.get(key[2], (None, None))
            stats[key] = (size, alloc)
        elif st is not None and key not in stats:
            stats[key] = (st.st_size, st.st_blocks * 512)

    for pid in pids():
        try:
            with open(f"/proc/{pid}/maps") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split(None, 5)
            if len(parts) < 6 or parts[1][3] != "s":
                continue
            kind = kind_of(parts[5])
            if kind is None:
                continue
            key = (kind, None if kind == "sysv" else parts[3], int(parts[4]))
            st = None
            if kind != "sysv":
                start, end = (int(x, 16) for x in parts[0].split("-"))
                try:
                    st = os.stat(f"/proc/{pid}/map_files/{start:x}-{end:x}")
                except OSError:
                    continue
            note(key, pid, st)
            maps[key] = maps.get(key, 0) + 1
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for n in names:
            try:
                kind = kind_of(os.readlink(f"/proc/{pid}/fd/{n}"))
                if kind is None or kind == "sysv":
                    continue
                st = os.stat(f"/proc/{pid}/fd/{n}")
            except OSError:
                continue
            key = (kind, "%02x:%02x" % (os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino)
            note(key, pid, st)
            fds[key] = fds.get(key, 0) + 1
    return {k: Fact(stats[k][0], stats[k][1], frozenset(h), fds.get(k, 0), maps.get(k, 0))
            for k, h in holders.items() if k in stats}


def held_by(all_facts: Dict[Key, Fact], some: Set[int]) -> Dict[Key, Fact]:
    """The buffers any of these processes holds (with all their holders)."""
    return {k: f for k, f in all_facts.items() if f.holders & some}


def memtrack_view(snap, keys) -> Dict[Key, Fact]:
    """The same figures from a memtrack Snapshot, for these buffers (matched by kind and
    inode, and device where memtrack names one). allocated only where the Buffer has it."""
    by_ki = {}
    for b in snap.buffers:
        by_ki.setdefault((b.kind, b.inode), []).append(b)
    out = {}
    for key in keys:
        kind, dev, inode = key
        found = [b for b in by_ki.get((kind, inode), ()) if b.dev in (None, dev)]
        if len(found) != 1:
            continue
        b = found[0]
        out[key] = Fact(b.size, getattr(b, "allocated", None), frozenset(b.holders), b.fd_refs, b.map_refs)
    return out


def rss(all_facts: Dict[Key, Fact], pid: int) -> int:
    """A process's rss as memtrack defines it: the sizes of the buffers it holds."""
    return sum(f.size for f in all_facts.values() if pid in f.holders)


def has_allocated() -> bool:
    """Whether this memtrack's Buffer carries allocated bytes (issue 14 part 1)."""
    from memtrack.model import Buffer
    return "allocated" in getattr(Buffer, "__dataclass_fields__", {})


def comparable(view: Dict[Key, Fact]) -> Dict[Key, Fact]:
    """The figures both sides have: allocated left out where memtrack has none yet."""
    if has_allocated():
        return view
    return {k: f._replace(allocated=None) for k, f in view.items()}


_bpf = None


def backends():
    """The live backends that can run here, as (name, scan()) pairs: procfs always; bpf where
    it loads (one scanner for the test session: loading is the slow part)."""
    global _bpf
    from memtrack.procfs import scan
    from memtrack.sources import open_source

    def procfs():
        src = open_source()
        try:
            return scan(src)
        finally:
            src.close()
    out = [("procfs", procfs)]
    from memtrack import bpf
    if _bpf is None and not bpf.unavailable():
        try:
            _bpf = bpf.BpfScanner(reuse=False)
        except bpf.BpfUnavailable:
            _bpf = False
    if _bpf:
        out.append(("bpf", _bpf.scan))
    return out


def compare(some: Set[int], tries: int = 3):
    """[(backend, expected, memtrack's, snapshot)] for the buffers these processes hold, each
    backend's scan taken between two readings of /proc that agree (a client may swap its
    buffers meanwhile: then the scan is taken again)."""
    out = []
    for name, scan_now in backends():
        for _ in range(tries):
            before = held_by(facts(), some)
            snap = scan_now()
            after = held_by(facts(), some)
            if before == after:
                break
        assert before == after, "the processes kept changing their buffers"
        out.append((name, comparable(before), comparable(memtrack_view(snap, before)), snap))
    return out
