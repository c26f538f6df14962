"""/proc/PID/maps: shared mappings of shared buffers (perms with 's')."""
from __future__ import annotations

import re
from typing import Iterator, Optional, Tuple

from .fd import strip_deleted

# Only shared mappings matter; the regex engine rejects the other lines in C.
_SHARED = re.compile(
    rb"^([0-9a-f]+)-([0-9a-f]+) [r-][w-][x-]s ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+) +(/[^\n]*)$",
    re.M)


def classify_path(path: str) -> Optional[Tuple[str, Optional[str]]]:
    """(kind, name) for a maps path that is a shared buffer, else None."""
    if path.startswith("/memfd:"):
        return "memfd", strip_deleted(path[7:])
    if path.startswith("/dmabuf:"):
        return "dmabuf", path[8:] or None
    if path.startswith("/dev/shm/"):
        return "shm", strip_deleted(path[9:])
    if path.startswith("/SYSV") and len(path) >= 13:
        return "sysv", "0x" + path[5:13]
    if path == "/dev/zero (deleted)":
        return "shmem", None
    if path.startswith("/dev/ashmem"):
        return "ashmem", strip_deleted(path[11:]).lstrip("/") or None
    return None


def norm_dev(dev: str) -> str:
    major, _, minor = dev.partition(":")
    return "%02x:%02x" % (int(major, 16), int(minor, 16))


def parse_shared(data: bytes) -> Iterator[tuple]:
    """(start, end, offset, dev, inode, kind, name) for each shared-buffer mapping."""
    for start, end, off, dev, ino, path in _SHARED.findall(data):
        kp = classify_path(path.decode("utf-8", "surrogateescape"))
        if kp is None:
            continue
        yield (int(start, 16), int(end, 16), int(off, 16), norm_dev(dev.decode()), int(ino),
               kp[0], kp[1])
