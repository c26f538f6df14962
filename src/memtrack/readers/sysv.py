"""/proc/sysvipc/shm (ipc/shm.c sysvipc_shm_proc_show).

The last two columns, rss and swap (bytes: shm_add_rss_swap's page counts times PAGE_SIZE;
Linux >= 2.6.34), are the pages of the segment in memory and in swap: its allocated bytes
are their sum. A table without them leaves allocated unknown."""
from __future__ import annotations

from typing import List

from ..observe import KernelBuffer
from .num import u64


def parse(text: str) -> List[KernelBuffer]:
    lines = text.splitlines()
    if not lines:
        return []
    cols = lines[0].split()
    if "shmid" not in cols or "size" not in cols:
        raise ValueError("no sysvipc/shm header")
    ix = {c: i for i, c in enumerate(cols)}
    out = []
    for line in lines[1:]:
        f = line.split()
        if len(f) < len(cols):
            continue
        try:
            alloc = swapped = None
            if "rss" in ix and "swap" in ix:
                rss, swapped = u64(f[ix["rss"]]), u64(f[ix["swap"]])
                alloc = rss + swapped
            key = f[ix["key"]]            # %10d of a signed int: the only signed column
            key = -u64(key[1:]) if key.startswith("-") else u64(key)
            out.append(KernelBuffer(
                kind="sysv", inode=u64(f[ix["shmid"]]), size=u64(f[ix["size"]]), exporter=None,
                name="0x%08x" % (key & 0xFFFFFFFF), count=u64(f[ix["nattch"]]), source="sysvipc",
                allocated=alloc, swapped=swapped))
        except (ValueError, KeyError):
            continue
    return out
