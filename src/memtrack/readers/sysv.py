"""/proc/sysvipc/shm (ipc/shm.c sysvipc_shm_proc_show)."""
from __future__ import annotations

from typing import List

from ..observe import KernelBuffer


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
            key = int(f[ix["key"]])
            out.append(KernelBuffer(
                kind="sysv", inode=int(f[ix["shmid"]]), size=int(f[ix["size"]]), exporter=None,
                name="0x%08x" % (key & 0xFFFFFFFF), count=int(f[ix["nattch"]]), source="sysvipc"))
        except (ValueError, KeyError):
            continue
    return out
