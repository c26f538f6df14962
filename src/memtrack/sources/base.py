"""The Source interface, and the path-based implementation shared by trees and archives."""
from __future__ import annotations

import datetime as _dt
import json
from typing import Dict, List, Optional, Tuple

from ..errors import ProcessGone, Unreadable, Vanished

Stat = Tuple[str, int, int, int]     # (dev "MM:mm", inode, size, mode)


_DEVS = {}


def fmt_dev(st_dev: int) -> str:
    """st_dev as maps prints it ("MM:mm", hex). Few devices exist: cache them."""
    s = _DEVS.get(st_dev)
    if s is None:
        import os
        s = _DEVS[st_dev] = "%02x:%02x" % (os.major(st_dev), os.minor(st_dev))
    return s


def is_number(name: str) -> bool:
    """A name the kernel would print for a pid or an fd: ASCII digits, no leading zero.
    (str.isdigit accepts "²", which int() refuses, and "01" would read pid 1 twice.)"""
    return name.isascii() and name.isdigit() and (name == "0" or name[0] != "0")


U64 = 1 << 64


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProcReader:
    """Reads one process. Every method raises Vanished, Denied or Unreadable, nothing else."""
    pid: int

    def fds(self) -> List[str]: raise NotImplementedError
    def readlink(self, fd: str) -> str: raise NotImplementedError

    def fd_targets(self) -> List[Tuple[str, str]]:
        """(fd, link target) for every open fd; fds closed meanwhile are left out."""
        out = []
        for fd in self.fds():
            try:
                out.append((fd, self.readlink(fd)))
            except Vanished:
                continue
        return out

    def fdinfo(self, fd: str) -> str: raise NotImplementedError
    def fdstat(self, fd: str) -> Optional[Stat]: raise NotImplementedError
    def maps(self) -> bytes: raise NotImplementedError
    def smaps(self) -> bytes: raise NotImplementedError
    def mapstat(self, start: int, end: int) -> Optional[Stat]: raise NotImplementedError
    def status(self) -> str: raise NotImplementedError
    def cmdline(self) -> bytes: raise NotImplementedError
    def close(self) -> None: pass


class Source:
    label = "?"
    live = False
    #: read every optional file (fdinfo of all buffer fds, map_files of all buffer maps):
    #: set when recording a capture, so the archive can answer every later question
    thorough = False

    def pids(self) -> List[int]: raise NotImplementedError
    def process(self, pid: int) -> ProcReader: raise NotImplementedError
    def read(self, rel: str) -> bytes: raise NotImplementedError
    def listdir(self, rel: str) -> List[str]: raise NotImplementedError
    def meta(self) -> dict: return {}
    def taken_at(self) -> str: return now_iso()
    def close(self) -> None: pass

    def read_text(self, rel: str) -> str:
        return self.read(rel).decode("utf-8", "surrogateescape")


def parse_statfile(text: str, key_is_range: bool) -> Dict[str, Stat]:
    """fdstat: `fd dev ino size mode`; mapstat: `start-end dev ino size mode` (mode octal)."""
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 4:
            continue
        try:
            dev = f[1]
            major, sep, minor = dev.partition(":")
            if not sep:
                raise ValueError
            dev = "%02x:%02x" % (int(major, 16), int(minor, 16))
            if len(f[2]) > 20 or len(f[3]) > 20:
                raise ValueError
            ino, size = int(f[2]), int(f[3])
            mode = int(f[4], 8) if len(f) > 4 and len(f[4]) <= 8 else 0
            if not (0 <= ino < U64 and 0 <= size < U64):
                raise ValueError
            out[f[0]] = (dev, ino, size, mode)
        except ValueError:
            continue
    return out


class PathProc(ProcReader):
    """A process read from a path-addressed store (directory tree, archive)."""

    def __init__(self, src: "PathSource", pid: int):
        self.src, self.pid = src, pid
        self.base = f"proc/{pid}"
        self._fdstat: Optional[Dict[str, Stat]] = None
        self._mapstat: Optional[Dict[str, Stat]] = None
        if not src.exists(self.base):
            raise Vanished(f"{self.base}: no such process")

    def fds(self):
        try:
            names = self.src.listdir(self.base + "/fd")
        except Vanished:
            return []            # a capture of a process with no fd/ (e.g. a zombie)
        return [n for n in names if is_number(n)]

    def readlink(self, fd):
        return self.src.readlink(f"{self.base}/fd/{fd}")

    def fdinfo(self, fd):
        try:
            return self.src.read_text(f"{self.base}/fdinfo/{fd}")
        except Vanished:
            if self.src.exists(f"{self.base}/fd/{fd}"):
                # the capture has the fd but not its fdinfo (unreadable when captured):
                # the fd is real, only its details are missing
                raise Unreadable(f"{self.base}/fdinfo/{fd}: not captured") from None
            raise

    def _sidecar(self, name, key_is_range):
        try:
            return parse_statfile(self.src.read_text(f"{self.base}/{name}"), key_is_range)
        except (Vanished, Unreadable):
            return {}

    def fdstat(self, fd):
        if self._fdstat is None:
            self._fdstat = self._sidecar("fdstat", False)
        return self._fdstat.get(fd)

    def mapstat(self, start, end):
        if self._mapstat is None:
            self._mapstat = self._sidecar("mapstat", True)
        return self._mapstat.get("%x-%x" % (start, end))

    def maps(self):
        return self.src.read_maps(self.base + "/maps")

    def smaps(self):
        return self.src.read_maps(self.base + "/smaps", smaps=True)

    def status(self):
        return self.src.read_text(self.base + "/status")

    def cmdline(self):
        return self.src.read(self.base + "/cmdline")


class PathSource(Source):
    """Common logic for stores addressed by relative paths like 'proc/12/maps'."""

    def exists(self, rel: str) -> bool: raise NotImplementedError
    def readlink(self, rel: str) -> str: raise NotImplementedError

    def read_maps(self, rel: str, smaps: bool = False) -> bytes:
        """A maps (smaps) file, or what the scan needs of it: an archive keeps only that
        (readers.maps.SharedFilter), a tree streams it through the same filter."""
        return self.read(rel)

    def pids(self):
        try:
            names = self.listdir("proc")
        except Vanished:
            return []
        return sorted(int(n) for n in names if is_number(n))

    def process(self, pid):
        return PathProc(self, pid)

    _meta = None

    def meta(self):
        if self._meta is None:
            try:
                doc = json.loads(self.read_text("meta.json"))
            except (ProcessGone, ValueError, RecursionError):
                doc = {}
            self._meta = doc if isinstance(doc, dict) else {}
        return self._meta
