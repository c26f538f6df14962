"""Which cgroup each mapped page of a buffer is charged to, on the live machine: the page
frame of every present page of the holders' mappings (/proc/PID/pagemap) and the memory
cgroup it is charged to (/proc/kpagecgroup: the inode of the cgroup's directory). Both
need root (CAP_SYS_ADMIN). Only pages some holder has in its page tables can be told: a
page of a buffer nobody maps, or maps without having touched it, is not seen.

This reads, and never maps or touches, other processes' memory: no charge moves."""
from __future__ import annotations

import os
import struct
from typing import Dict, Iterable, Optional, Set, Tuple

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PRESENT = 1 << 63
_PFN_MASK = (1 << 55) - 1
_MAX_PAGES = 1 << 22              # per mapping read: 16 GiB of 4 KiB pages, 32 MiB of pagemap


def _pfns(pid: int, vmas: Iterable[Tuple[int, int, int]]) -> Set[int]:
    """The page frames of the present pages of pid's mappings (start, end, offset)."""
    out: Set[int] = set()
    try:
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return out
    try:
        for start, end, _off in vmas:
            n = min((end - start) // PAGE, _MAX_PAGES)
            try:
                data = os.pread(fd, n * 8, (start // PAGE) * 8)
            except OSError:
                continue
            for (e,) in struct.iter_unpack("<Q", data[: len(data) // 8 * 8]):
                if e & _PRESENT:
                    pfn = e & _PFN_MASK
                    if pfn:                   # 0: the kernel hid it (no CAP_SYS_ADMIN)
                        out.add(pfn)
    finally:
        os.close(fd)
    return out


def page_charges(snap, proc_root: str = "/proc") -> Optional[Dict[str, Dict[int, int]]]:
    """buffer id -> {memory cgroup inode: bytes of its seen pages charged there}; None where
    the kernel does not say (no /proc/kpagecgroup, not root)."""
    try:
        kfd = os.open(f"{proc_root}/kpagecgroup", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        per_buffer: Dict[str, Set[int]] = {}
        for p in snap.processes:
            for r in p.refs:
                if r.vmas:
                    per_buffer.setdefault(r.buffer, set()).update(_pfns(p.pid, r.vmas))
        out: Dict[str, Dict[int, int]] = {}
        for bid, pfns in per_buffer.items():
            acc: Dict[int, int] = {}
            for pfn in sorted(pfns):
                try:
                    data = os.pread(kfd, 8, pfn * 8)
                except OSError:
                    continue
                if len(data) == 8:
                    ino = struct.unpack("<Q", data)[0]
                    acc[ino] = acc.get(ino, 0) + PAGE
            if acc:
                out[bid] = acc
        return out
    finally:
        os.close(kfd)
