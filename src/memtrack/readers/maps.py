"""/proc/PID/maps: shared mappings of shared buffers (perms with 's')."""
from __future__ import annotations

import re
from typing import Iterator

from .fd import classify

# One line of maps: start-end perms offset dev inode path
_LINE = re.compile(rb"([0-9a-f]+)-([0-9a-f]+) [r-][w-][x-]s ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+) +(/[^\n]*)")


def shared_lines(data: bytes):
    """Match objects for the shared mappings (perms ending in 's') of a maps text.

    Shared lines are few; finding them with bytes.find (C speed over the whole text) and
    parsing only those is several times faster than running a regex over every line. The
    perms field ends in "-s " or "xs "; a hit inside a path is rejected by the line regex."""
    out = []
    for needle in (b"-s ", b"xs "):
        pos = data.find(needle)
        while pos >= 0:
            start = data.rfind(b"\n", 0, pos) + 1
            m = _LINE.match(data, start)
            if m is not None and m.start(3) == pos + 3:
                out.append(m)
            pos = data.find(needle, pos + 3)
    if len(out) > 1:
        out.sort(key=lambda m: m.start())
    return out


def norm_dev(dev: str) -> str:
    major, _, minor = dev.partition(":")
    return "%02x:%02x" % (int(major, 16), int(minor, 16))


def parse_shared(data: bytes) -> Iterator[tuple]:
    """(start, end, offset, dev, inode, kind, name) for each shared-buffer mapping."""
    for m in shared_lines(data):
        start, end, off, dev, ino, path = m.groups()
        kp = classify(path.decode("utf-8", "surrogateescape"))
        if kp is None:
            continue
        yield (int(start, 16), int(end, 16), int(off, 16), norm_dev(dev.decode()), int(ino),
               kp[0], kp[1])
