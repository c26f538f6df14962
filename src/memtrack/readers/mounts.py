"""/proc/PID/mountinfo: the mounts whose files are buffers though their paths do not say so:
/dev/shm's filesystem mounted elsewhere too (a bind mount, in this mount namespace or
another), so that a file reached that way is still the /dev/shm file it is (one buffer,
every holder, named as under /dev/shm); and hugetlbfs mounts (/dev/hugepages...), whose
files are huge-page buffers (kind hugetlb)."""
from __future__ import annotations

import os
import re
from typing import Callable, Dict, Optional, Tuple

from .fd import classify, strip_deleted

_ESC = re.compile(r"\\([0-7]{3})")

Binds = Tuple[Tuple[str, str, str], ...]   # (mount point + "/", its root in the fs + "/", kind)


def _unescape(s: str) -> str:
    # mountinfo octal-escapes space, tab, newline and backslash in paths
    return _ESC.sub(lambda m: chr(int(m.group(1), 8)), s) if "\\" in s else s


def shm_binds(text: str, dev: Optional[Tuple[int, int]]) -> Binds:
    """The mounts of filesystem dev (major, minor) in a mountinfo text but /dev/shm itself
    (kind "shm"), and the hugetlbfs mounts (kind "hugetlb")."""
    out = []
    for line in text.split("\n"):
        f = line.split(" ", 5)
        if len(f) < 6:
            continue
        fstype = line.partition(" - ")[2].split(" ", 1)[0]
        if fstype == "hugetlbfs":
            kind = "hugetlb"
        else:
            major, _, minor = f[2].partition(":")
            if dev is None or not (major.isdigit() and minor.isdigit()) or (int(major), int(minor)) != dev:
                continue
            kind = "shm"
        root, point = _unescape(f[3]), _unescape(f[4])
        if kind == "shm" and point == "/dev/shm" and root == "/":
            continue
        out.append((point.rstrip("/") + "/", root.rstrip("/") + "/", kind))
    # the longest mount point first: a mount inside another wins
    return tuple(sorted(out, key=lambda b: -len(b[0])))


def relevant_lines(text: str, dev: Optional[Tuple[int, int]]) -> str:
    """The lines of a mountinfo text shm_binds can use (what a capture records of it)."""
    key = "%d:%d" % dev if dev is not None else None
    out = []
    for line in text.split("\n"):
        f = line.split(" ", 3)
        if (len(f) > 3 and f[2] == key) or " - hugetlbfs " in line:
            out.append(line + "\n")
    return "".join(out)


def kind_of(path: str, binds: Binds) -> Optional[Tuple[str, Optional[str]]]:
    """(kind, name) of a file path under one of the binds, as classify() gives for paths
    that say what they are; else None."""
    for point, root, kind in binds:
        if path.startswith(point):
            if kind == "shm":
                return classify("/dev/shm" + root + path[len(point):])
            return kind, strip_deleted(path)
    return None


class ShmBinds:
    """Per mount namespace (read once each), the binds of its processes (shm_binds).
    ns_of(pid): the namespace's identity (the ns/mnt link), mountinfo_of(pid): its text;
    both raise OSError when the process cannot be read. dev: /dev/shm's (major, minor) as
    the scanner sees it, or None."""

    def __init__(self, ns_of: Callable[[int], str], mountinfo_of: Callable[[int], str],
                 dev: Optional[Tuple[int, int]]):
        self.ns_of, self.mountinfo_of, self.dev = ns_of, mountinfo_of, dev
        self._by_ns: Dict[str, Binds] = {}
        self._by_pid: Dict[int, Binds] = {}

    def of(self, pid: int) -> Binds:
        """pid's binds; () where none or unreadable."""
        b = self._by_pid.get(pid)
        if b is not None:
            return b
        try:
            ns = self.ns_of(pid)
            b = self._by_ns.get(ns)
            if b is None:
                b = self._by_ns[ns] = shm_binds(self.mountinfo_of(pid), self.dev)
        except OSError:
            b = ()
        self._by_pid[pid] = b
        return b

    def kind_of(self, pid: int, path: Optional[str]) -> Optional[Tuple[str, Optional[str]]]:
        """(kind, name) of a path pid sees that only its mounts tell as a buffer, or None."""
        if not path or path[0] != "/":
            return None
        b = self.of(pid)
        return kind_of(path, b) if b else None


def shm_dev() -> Optional[Tuple[int, int]]:
    try:
        d = os.stat("/dev/shm").st_dev
    except OSError:
        return None
    return os.major(d), os.minor(d)


def live_shm_binds(proc_root: str = "/proc") -> ShmBinds:
    """ShmBinds of this machine's processes."""
    def ns_of(pid):
        return os.readlink(f"{proc_root}/{pid}/ns/mnt")

    def mountinfo_of(pid):
        with open(f"{proc_root}/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    return ShmBinds(ns_of, mountinfo_of, shm_dev())
