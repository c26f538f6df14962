"""This machine's /proc and /sys. Directory fds and *at() calls keep the kernel's path
walks short: a scan is mostly syscalls, so each one saved counts."""
from __future__ import annotations

import os

from ..errors import translated
from .base import ProcReader, Source, fmt_dev, is_number

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_CLOEXEC
_CHUNK = 1 << 16


def read_at(name, dir_fd=None, single=False) -> bytes:
    """Whole file. Multi-record seq_files (maps, smaps, sysvipc) return about a page per
    read(), so loop to EOF. single=True is for single_open files (fdinfo, status) and
    cmdline, which return everything they have in the first read: a short read is EOF and
    saves a syscall on the hot path."""
    fd = os.open(name, _O_READ, dir_fd=dir_fd)
    try:
        data = os.read(fd, _CHUNK)
        if single and len(data) < _CHUNK:
            return data
        parts = [data]
        while data:
            data = os.read(fd, _CHUNK)
            parts.append(data)
        return b"".join(parts)
    finally:
        os.close(fd)


# kcmp(2) by machine (no libc wrapper); elsewhere per-thread fd tables are not told apart
_SYS_KCMP = {"x86_64": 312, "aarch64": 272, "riscv64": 272, "loongarch64": 272, "i686": 349,
             "i386": 349, "armv7l": 378, "armv6l": 378, "ppc64le": 354, "s390x": 343}
_KCMP_FILES = 2
_kcmp = []


def kcmp_files(pid: int, tid1: int, tid2: int):
    """Whether threads tid1 and tid2 (of process pid) share one fd table: True, False, or
    None where the kernel cannot say (no kcmp: CONFIG_KCMP off, an unknown machine, or
    not allowed: kcmp needs the ptrace read access /proc/PID/fd needs too)."""
    if not _kcmp:
        import ctypes
        nr = _SYS_KCMP.get(os.uname().machine)
        libc = ctypes.CDLL(None, use_errno=True) if nr else None
        if libc is not None:
            libc.syscall.restype = ctypes.c_long
        _kcmp.extend((libc, nr))
    libc, nr = _kcmp
    if libc is None:
        return None
    r = libc.syscall(nr, tid1, tid2, _KCMP_FILES, 0, 0)
    return None if r < 0 else r == 0


class LiveProc(ProcReader):
    __slots__ = ("pid", "tid", "_dir", "_fddir")

    @translated
    def __init__(self, proc_root: str, pid: int, dir_fd=None):
        self.pid = self.tid = pid
        self._fddir = None
        # dir_fd: another process's /proc/PID, pid a thread's id (see fd_tables)
        self._dir = os.open(f"../{pid}" if dir_fd is not None else f"{proc_root}/{pid}", _O_DIR,
                            dir_fd=dir_fd)

    @translated
    def fd_tables(self):
        """Readers of the fd tables of this process's threads that are not its leader's (a
        thread that unshared CLONE_FILES; every live thread's once the leader has exited,
        whose table is then none), one per distinct table; reader.tid names the thread.
        A single-threaded process costs one fstatat: /proc/PID/task's link count is 2 + its
        threads. kcmp tells tables apart; where it cannot, the list is None and a reader of
        the first other thread (for an exited leader: the caller notes what went unread).
        Readers of threads carry the process's pid."""
        if os.stat("task", dir_fd=self._dir).st_nlink <= 3:
            return []
        d = os.open("task", _O_DIR, dir_fd=self._dir)
        try:
            tids = sorted(int(t) for t in os.listdir(d) if t.isdigit() and int(t) != self.pid)
            taken = [self.pid]
            out = []
            for tid in tids:
                same = None
                for t in taken:
                    same = kcmp_files(self.pid, t, tid)
                    if same is not False:
                        break
                if same:
                    continue
                try:
                    # /proc/TID, not /proc/PID/task/TID: only the former has map_files
                    r = LiveProc("", tid, dir_fd=self._dir)
                except OSError:
                    continue                          # the thread ended meanwhile
                r.pid = self.pid
                if same is None:
                    for o in out:
                        o.close()
                    return [None, r]
                taken.append(tid)
                out.append(r)
            return out
        finally:
            os.close(d)

    @translated
    def fds(self):
        self._fddir = os.open("fd", _O_DIR, dir_fd=self._dir)
        return os.listdir(self._fddir)

    @translated
    def fd_targets(self):
        # the hot loop of a scan: one readlink per fd, kept free of per-call overhead
        d = self._fddir = os.open("fd", _O_DIR, dir_fd=self._dir)
        readlink = os.readlink
        out = []
        append = out.append
        for fd in os.listdir(d):
            try:
                append((fd, readlink(fd, dir_fd=d)))
            except FileNotFoundError:
                continue          # closed between listdir and readlink
        return out

    @translated
    def readlink(self, fd):
        return os.readlink(fd, dir_fd=self._fddir)

    @translated
    def fdinfo(self, fd):
        return read_at("fdinfo/" + fd, self._dir, single=True).decode("utf-8", "surrogateescape")

    @translated
    def fdstat(self, fd):
        st = os.stat(fd, dir_fd=self._fddir)
        return fmt_dev(st.st_dev), st.st_ino, st.st_size, st.st_mode, st.st_blocks

    @translated
    def mapstat(self, start, end):
        st = os.stat("map_files/%x-%x" % (start, end), dir_fd=self._dir)
        return fmt_dev(st.st_dev), st.st_ino, st.st_size, st.st_mode, st.st_blocks

    @translated
    def maps(self):
        return read_at("maps", self._dir)

    @translated
    def smaps(self):
        return read_at("smaps", self._dir)

    @translated
    def status(self):
        return read_at("status", self._dir, single=True).decode("utf-8", "surrogateescape")

    @translated
    def cmdline(self):
        return read_at("cmdline", self._dir, single=True)

    @translated
    def cgroup(self):
        return read_at("cgroup", self._dir, single=True).decode("utf-8", "surrogateescape")

    @translated
    def read_comm(self):
        return read_at("comm", self._dir, single=True)

    def close(self):
        for fd in (self._fddir, self._dir):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fddir = self._dir = None


class LiveSource(Source):
    label = "live"
    live = True

    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys"):
        self.proc_root, self.sys_root = proc_root, sys_root

    def pids(self):
        return sorted(int(n) for n in os.listdir(self.proc_root) if is_number(n))

    def process(self, pid):
        return LiveProc(self.proc_root, pid)

    def _path(self, rel: str) -> str:
        if rel.startswith("proc/"):
            return self.proc_root + rel[4:]
        if rel.startswith("sys/"):
            return self.sys_root + rel[3:]
        return "/" + rel

    @translated
    def read(self, rel):
        return read_at(self._path(rel))

    @translated
    def listdir(self, rel):
        return os.listdir(self._path(rel))

    def meta(self):
        return {}

    def shm_binds(self):
        from ..readers.mounts import live_shm_binds
        return live_shm_binds(self.proc_root)
