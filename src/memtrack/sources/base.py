"""The Source interface, and the path-based implementation shared by trees and archives."""
from __future__ import annotations

import datetime as _dt
import json
from typing import Dict, List, Optional, Tuple

from ..errors import ProcessGone, Unreadable, Vanished
from ..readers.num import PID_MAX_LIMIT, U64


def shown(name: str, limit: int = 80) -> str:
    """A member name made safe to print: undecodable bytes and control characters escaped."""
    s = name.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
    s = "".join(c if " " <= c < "\x7f" else "\\x%02x" % ord(c) for c in s)
    return s if len(s) <= limit else s[:limit] + "..."


Stat = Tuple[str, int, int, int]     # (dev "MM:mm", inode, size, mode)
# with blocks: (dev, inode, size, mode, st_blocks or None), st_blocks in 512-byte units
StatB = Tuple[str, int, int, int, Optional[int]]


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


_SHOWN = 3


def is_pid(n: int) -> bool:
    return 0 < n <= PID_MAX_LIMIT


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
    def cgroup(self) -> str: raise NotImplementedError     # /proc/PID/cgroup
    def close(self) -> None: pass

    def fd_tables(self) -> list:
        """Readers of this process's other fd tables (threads'; see LiveProc.fd_tables).
        Captures and trees record the leader's alone."""
        return []


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

    def shm_binds(self):
        """A readers.mounts.ShmBinds of the processes' mounts, or None where none are known."""
        return None
    def close(self) -> None: pass

    def read_text(self, rel: str) -> str:
        return self.read(rel).decode("utf-8", "surrogateescape")


def parse_statfile(text: str, key_is_range: bool, dups: Optional[list] = None,
                   blocks: bool = False) -> Dict[str, Stat]:
    """fdstat: `fd dev ino size mode [blocks]`; mapstat: `start-end dev ino size mode
    [blocks]` (mode octal, blocks st_blocks: 512-byte units). With blocks, each value has
    a fifth item, the block count, None where the line has none (a capture from before
    it was written) or a malformed one: unknown, never guessed.
    A key given twice with different values is dropped (which line is the true one?); each
    repeated key is appended to dups, for a note."""
    out: Dict[str, Stat] = {}
    conflicting = set()
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
        except ValueError:
            continue
        st = (dev, ino, size, mode)
        if blocks:
            nb = f[5] if len(f) > 5 else ""
            nb = int(nb) if nb.isascii() and nb.isdigit() and len(nb) <= 20 else None
            st += (nb if nb is not None and nb < U64 // 512 else None,)
        old = out.get(f[0])
        if old is not None or f[0] in conflicting:
            if dups is not None:
                dups.append(f[0])
            if old is not None and blocks and old[:4] == st[:4] and None in (old[4], st[4]):
                out[f[0]] = old if st[4] is None else st     # one line lacks the count: no conflict
            elif old != st:
                conflicting.add(f[0])
                out.pop(f[0], None)
            continue
        out[f[0]] = st
    return out


class PathProc(ProcReader):
    """A process read from a path-addressed store (directory tree, archive)."""

    def __init__(self, src: "PathSource", pid: int, base: Optional[str] = None):
        self.src, self.pid = src, pid
        self.base = base or f"proc/{pid}"
        self._fdstat: Optional[Dict[str, Stat]] = None
        self._mapstat: Optional[Dict[str, Stat]] = None
        if not src.exists(self.base):
            raise Vanished(f"{self.base}: no such process")

    def fd_tables(self):
        """The threads a capture recorded under proc/PID/task/TID (fd/, fdinfo/, fdstat,
        maps, mapstat): those whose fd table is not the leader's, and, where the leader
        has exited, the live thread the process was read through. Read as the live scan
        reads the threads' tables (LiveProc.fd_tables), in thread id order."""
        try:
            names = self.src.listdir(self.base + "/task")
        except ProcessGone:
            return []
        tids = sorted(int(n) for n in names if is_number(n) and len(n) <= 7 and int(n) != self.pid)
        return [PathProc(self.src, self.pid, f"{self.base}/task/{t}") for t in tids]

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
        dups: list = []
        try:
            out = parse_statfile(self.src.read_text(f"{self.base}/{name}"), key_is_range, dups, True)
        except (Vanished, Unreadable):
            return {}
        if dups:
            self.src.found(f"repeated lines in {name} (a key given twice; where the lines "
                           "differ, neither is used)", f"{self.base}/{name}", len(dups))
        return out

    def fdstat(self, fd):
        if self._fdstat is None:
            self._fdstat = self._sidecar("fdstat", False)
        st = self._fdstat.get(fd)
        if st is not None and not self._agrees(fd, st):
            return None
        return st

    def _agrees(self, fd: str, st: Stat) -> bool:
        """Whether the sidecar's inode for fd matches what the kernel's own files say of it:
        the fdinfo `ino:` line (where the kernel prints one) and a link naming its inode (`anon_inode:[N]` style
        `[N]` suffix). fdstat is written by the capturer, not the kernel: where they differ
        it is not used, and that is noted."""
        from ..readers.fd import fdinfo_int, parse_fdinfo
        said = []
        try:
            ino = fdinfo_int(parse_fdinfo(self.src.read_text(f"{self.base}/fdinfo/{fd}")), "ino")
            if ino is not None:
                said.append(ino)
        except ProcessGone:
            pass
        try:
            link = self.readlink(fd)
        except ProcessGone:
            link = ""
        if link.endswith("]") and "[" in link:
            num = link[link.rindex("[") + 1:-1]
            if num.isascii() and num.isdigit():
                said.append(int(num))
        if any(n != st[1] for n in said):
            self.src.found("fdstat inode contradicts the fd's fdinfo or link (not used)",
                           f"{self.base}/fd/{fd}")
            return False
        return True

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

    def cgroup(self):
        return self.src.read_text(self.base + "/cgroup")


class PathSource(Source):
    """Common logic for stores addressed by relative paths like 'proc/12/maps'."""

    def exists(self, rel: str) -> bool: raise NotImplementedError
    def readlink(self, rel: str) -> str: raise NotImplementedError

    _found: Optional[Dict[str, list]] = None
    _pids_checked = False

    def found(self, why: str, name: str, n: int = 1) -> None:
        """Count something wrong found in the input while reading it, for input_notes()."""
        if self._found is None:
            self._found = {}
        e = self._found.setdefault(why, [0, []])
        e[0] += n
        if len(e[1]) < _SHOWN and name not in e[1]:
            e[1].append(name)

    def input_notes(self) -> List[str]:
        out = []
        for why, (n, names) in sorted((self._found or {}).items()):
            more = ", ..." if n > len(names) else ""
            out.append(f"{n} {why} ({', '.join(shown(x) for x in names)}{more})")
        return out

    def read_maps(self, rel: str, smaps: bool = False) -> bytes:
        """A maps (smaps) file, or what the scan needs of it: an archive keeps only that
        (readers.maps.SharedFilter), a tree streams it through the same filter."""
        return self.read(rel)

    def pids(self):
        try:
            names = self.listdir("proc")
        except Vanished:
            return []
        out = []
        for n in names:
            if is_number(n):
                if len(n) <= 7 and is_pid(int(n)):
                    out.append(int(n))
                elif not self._pids_checked:
                    self.found(f"proc/ entries that are no process (pid 0 or above {PID_MAX_LIMIT}), "
                               "ignored", "proc/" + n)
        self._pids_checked = True
        return sorted(out)

    def process(self, pid):
        return PathProc(self, pid)

    _meta = None

    def shm_binds(self):
        """The mounts a capture recorded: proc/PID/mountinfo (the lines of /dev/shm's
        filesystem and of hugetlbfs; one process's per mount namespace) and proc/PID/ns/mnt,
        with /dev/shm's device from meta.json's shm_dev. An older capture has none: no
        binds, as it read before."""
        from ..readers.mounts import ShmBinds
        dev = None
        d = self.meta().get("shm_dev")
        if isinstance(d, str) and d.count(":") == 1:
            try:
                major, minor = (int(x, 16) for x in d.split(":"))
                dev = (major, minor) if major < (1 << 32) and minor < (1 << 32) else None
            except ValueError:
                dev = None
        by_ns: Dict[str, str] = {}

        def ns_of(pid):
            try:
                return self.readlink(f"proc/{pid}/ns/mnt")
            except ProcessGone as exc:
                raise OSError(str(exc)) from None

        def mountinfo_of(pid):
            try:
                return self.read_text(f"proc/{pid}/mountinfo")
            except ProcessGone:
                pass
            # recorded once per namespace: another process's of the same one
            if not by_ns:
                for p in self.pids():
                    if self.exists(f"proc/{p}/mountinfo"):
                        try:
                            by_ns.setdefault(self.readlink(f"proc/{p}/ns/mnt"), f"proc/{p}/mountinfo")
                        except ProcessGone:
                            continue
                by_ns.setdefault("", "")
            rel = by_ns.get(ns_of(pid))
            if not rel:
                raise OSError("no mountinfo captured")
            try:
                return self.read_text(rel)
            except ProcessGone as exc:
                raise OSError(str(exc)) from None
        return ShmBinds(ns_of, mountinfo_of, dev)

    def meta(self):
        if self._meta is None:
            try:
                doc = json.loads(self.read_text("meta.json"))
            except (ProcessGone, ValueError, RecursionError):
                doc = {}
            self._meta = doc if isinstance(doc, dict) else {}
        return self._meta
