"""/proc/PID/fd links and /proc/PID/fdinfo text (fs/proc/fd.c, drivers/dma-buf/dma-buf.c)."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from .num import u64

DELETED = " (deleted)"


def strip_deleted(s: str) -> str:
    return s[:-len(DELETED)] if s.endswith(DELETED) else s


def classify(path: str) -> Optional[Tuple[str, Optional[str]]]:
    """(kind, name) for an fd link target or a maps path that is a shared buffer, else None."""
    if not path:
        return None
    if path[0] != "/":
        return ("dmabuf", None) if path == "anon_inode:dmabuf" else None
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
    if path == "/anon_hugepage (deleted)":
        # MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB: shared anonymous memory on the kernel's
        # internal hugetlbfs mount, the huge-page twin of "/dev/zero (deleted)"
        return "shmem", "anon_hugepage"
    if path.startswith("/dev/ashmem"):
        return "ashmem", strip_deleted(path[11:]).lstrip("/") or None
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
