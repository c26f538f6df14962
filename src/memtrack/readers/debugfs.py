"""/sys/kernel/debug/dma_buf/bufinfo (drivers/dma-buf/dma-buf.c dma_buf_debug_show)."""
from __future__ import annotations

import re
from typing import List, Optional, Tuple

from ..observe import KernelBuffer
from .num import u64

# %08zu\t%08x\t%08x\t%08ld\t%s\t%08lu\t%s  (the ino and name columns since 5.3)
_ROW = re.compile(r"^(\d+)\t([0-9a-fA-F]+)\t([0-9a-fA-F]+)\t(\d+)\t([^\t]*)(?:\t(\d+)(?:\t(.*))?)?$")
_TOTAL = re.compile(r"^Total (\d+) objects, (\d+) bytes")


def parse(text: str) -> Tuple[List[KernelBuffer], Optional[int], Optional[int]]:
    """(buffers, total objects, total bytes) from bufinfo."""
    if "Dma-buf Objects:" not in text:
        raise ValueError("not a dma_buf/bufinfo file")
    bufs = []
    total_count = total_bytes = None
    for line in text.splitlines():
        m = _ROW.match(line)
        if m:
            size, _flags, _mode, count, exp, ino, name = m.groups()
            try:
                kb = KernelBuffer(
                    kind="dmabuf", inode=u64(ino) if ino is not None else None, size=u64(size),
                    exporter=exp or None, name=None if name in (None, "<none>", "") else name,
                    count=u64(count), source="debugfs")
            except ValueError:
                continue              # numbers no kernel prints: not a row
            bufs.append(kb)
            continue
        t = _TOTAL.match(line)
        if t:
            try:
                total_count, total_bytes = u64(t.group(1)), u64(t.group(2))
            except ValueError:
                pass
    return bufs, total_count, total_bytes
