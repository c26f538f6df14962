"""/proc/PID/smaps: the Rss of each VMA, to tell what the kernel already counts in RSS."""
from __future__ import annotations

import re
from typing import Dict

_HEADER = re.compile(rb"^([0-9a-f]+)-[0-9a-f]+ ", re.M)
_RSS = re.compile(rb"^Rss:\s+(\d+) kB", re.M)


def parse_rss(data: bytes) -> Dict[int, int]:
    """VMA start -> Rss in bytes."""
    out = {}
    heads = [(m.start(), int(m.group(1), 16)) for m in _HEADER.finditer(data)]
    for i, (pos, start) in enumerate(heads):
        stop = heads[i + 1][0] if i + 1 < len(heads) else len(data)
        m = _RSS.search(data, pos, stop)
        if m:
            out[start] = int(m.group(1)) * 1024
    return out
