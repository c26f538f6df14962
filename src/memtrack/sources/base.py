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
            ino, size = int(f[2]), int(f[3])
            mode = int(f[4], 8) if len(f) > 4 else 0
            if ino < 0 or size < 0:
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
            return self.src.listdir(self.base + "/fd")
        except Vanished:
            return []            # a capture of a process with no fd/ (e.g. a zombie)

    def readlink(self, fd):
        return self.src.readlink(f"{self.base}/fd/{fd}")

    def fdinfo(self, fd):
        return self.src.read_text(f"{self.base}/fdinfo/{fd}")

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
        return self.src.read(self.base + "/maps")

    def smaps(self):
        return self.src.read(self.base + "/smaps")

    def status(self):
        return self.src.read_text(self.base + "/status")

    def cmdline(self):
        return self.src.read(self.base + "/cmdline")


class PathSource(Source):
    """Common logic for stores addressed by relative paths like 'proc/12/maps'."""

    def exists(self, rel: str) -> bool: raise NotImplementedError
    def readlink(self, rel: str) -> str: raise NotImplementedError

    def pids(self):
        try:
            names = self.listdir("proc")
        except Vanished:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def process(self, pid):
        return PathProc(self, pid)

    _meta = None

    def meta(self):
        if self._meta is None:
            try:
                doc = json.loads(self.read_text("meta.json"))
            except (ProcessGone, ValueError):
                doc = {}
            self._meta = doc if isinstance(doc, dict) else {}
        return self._meta
