"""/proc/PID/fd links and /proc/PID/fdinfo text (fs/proc/fd.c, drivers/dma-buf/dma-buf.c)."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from .num import u64

DELETED = " (deleted)"


def strip_deleted(s: str) -> str:
    return s[:-len(DELETED)] if s.endswith(DELETED) else s


def classify(target: str) -> Optional[Tuple[str, Optional[str]]]:
    """(kind, name) for an fd link target that is a shared buffer, else None."""
    if not target:
        return None
    c = target[0]
    if c == "/":
        if target.startswith("/memfd:"):
            return "memfd", strip_deleted(target[7:])
        if target.startswith("/dmabuf:"):
            return "dmabuf", target[8:] or None
        if target.startswith("/dev/shm/"):
            return "shm", strip_deleted(target[9:])
        if target.startswith("/dev/ashmem"):
            name = strip_deleted(target[11:]).lstrip("/")
            return "ashmem", name or None
        if target == "/dev/zero (deleted)":
            return "shmem", None
        return None
    if target == "anon_inode:dmabuf":
        return "dmabuf", None
    return None


def parse_fdinfo(text: str) -> Dict[str, str]:
    """key -> value for the `key:\\tvalue` lines (values stripped). Lock lines are skipped."""
    out = {}
    for line in text.split("\n"):      # not splitlines(): a dma-buf name may hold "\r"
        key, sep, value = line.partition(":")
        if sep and key and " " not in key:
            out.setdefault(key, value.strip())
    return out


def fdinfo_int(info: Dict[str, str], key: str, base: int = 10) -> Optional[int]:
    v = info.get(key)
    if v is None:
        return None
    try:
        return u64(v, base)
    except ValueError:
        return None
