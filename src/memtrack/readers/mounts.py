"""/proc/PID/mountinfo: where /dev/shm's filesystem is mounted besides /dev/shm (a bind mount,
in this mount namespace or another), so that a file reached through such a path is still
the /dev/shm file it is (one buffer, every holder), named as under /dev/shm."""
from __future__ import annotations

import os
import re
from typing import Callable, Dict, Optional, Tuple

_ESC = re.compile(r"\\([0-7]{3})")

Binds = Tuple[Tuple[str, str], ...]     # (mount point + "/", its root in the fs + "/")


def _unescape(s: str) -> str:
    # mountinfo octal-escapes space, tab, newline and backslash in paths
    return _ESC.sub(lambda m: chr(int(m.group(1), 8)), s) if "\\" in s else s


def shm_binds(text: str, dev: Tuple[int, int]) -> Binds:
    """The mounts of filesystem dev (major, minor) in a mountinfo text, but /dev/shm itself."""
    out = []
    for line in text.split("\n"):
        f = line.split(" ", 5)
        if len(f) < 5:
            continue
        major, _, minor = f[2].partition(":")
        if not (major.isdigit() and minor.isdigit()) or (int(major), int(minor)) != dev:
            continue
        root, point = _unescape(f[3]), _unescape(f[4])
        if point == "/dev/shm" and root == "/":
            continue
        out.append((point.rstrip("/") + "/", root.rstrip("/") + "/"))
    # the longest mount point first: a mount inside another wins
    return tuple(sorted(out, key=lambda b: -len(b[0])))


def as_shm_path(path: str, binds: Binds) -> Optional[str]:
    """path under one of the binds, as the /dev/shm path of the same file; else None."""
    for point, root in binds:
        if path.startswith(point):
            return "/dev/shm" + root + path[len(point):]
    return None


class ShmBinds:
    """Per mount namespace (read once each), where /dev/shm's filesystem is also mounted.
    ns_of(pid): the namespace's identity (the ns/mnt link), mountinfo_of(pid): its text;
    both raise OSError when the process cannot be read. dev: /dev/shm's (major, minor) as
    the scanner sees it, or None (no /dev/shm: nothing to do)."""

    def __init__(self, ns_of: Callable[[int], str], mountinfo_of: Callable[[int], str],
                 dev: Optional[Tuple[int, int]]):
        self.ns_of, self.mountinfo_of, self.dev = ns_of, mountinfo_of, dev
        # the device as the kernel encodes a dev_t (the BPF records' dev field)
        self.kdev = dev[0] << 20 | dev[1] if dev is not None else None
        self._by_ns: Dict[str, Binds] = {}
        self._by_pid: Dict[int, Binds] = {}

    def of(self, pid: int) -> Binds:
        """pid's binds; () where none or unreadable."""
        if self.dev is None:
            return ()
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

    def rename(self, pid: int, kdev: int, path: Optional[str]) -> Optional[str]:
        """For the BPF records: path (a file on the device kdev, kernel-encoded) as its
        /dev/shm path where it is /dev/shm's filesystem reached through a bind; else None."""
        if kdev != self.kdev or not path:
            return None
        b = self.of(pid)
        return as_shm_path(path, b) if b else None


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
