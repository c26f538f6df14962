"""/proc/PID/smaps: the Rss of each VMA, to tell what the kernel already counts in RSS."""
from __future__ import annotations

import re
from typing import Dict

from .num import u64

_HEADER = re.compile(rb"^([0-9a-f]+)-[0-9a-f]+ ", re.M)
_RSS = re.compile(rb"^Rss:\s+(\d+) kB", re.M)


def parse_rss(data: bytes) -> Dict[int, int]:
    """VMA start -> Rss in bytes."""
    out = {}
    heads = []
    for m in _HEADER.finditer(data):
        try:
            heads.append((m.start(), u64(m.group(1), 16)))
        except ValueError:
            heads.append((m.start(), None))        # keeps the VMA boundary, no entry
    for i, (pos, start) in enumerate(heads):
        if start is None:
            continue
        stop = heads[i + 1][0] if i + 1 < len(heads) else len(data)
        m = _RSS.search(data, pos, stop)
        if m:
            try:
                out[start] = u64(m.group(1)) * 1024
            except ValueError:
                continue
    return out
