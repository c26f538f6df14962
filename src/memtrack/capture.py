"""Capture archives: record every file a live scan reads, then write them as a .tar.gz laid
out like / (README.md, "Captures"), with memtrack's sidecars:
  proc/<pid>/fdstat   `fd dev ino size mode blocks` per buffer fd: what stat saw (blocks:
                      st_blocks, 512-byte units; older captures lack it: allocated unknown)
  proc/<pid>/mapstat  `start-end dev ino size mode blocks` per buffer mapping: a stat of map_files,
                      so map-only buffers keep their real size (without it a capture
                      could not size shared anonymous maps)
  proc/<pid>/task/<tid>/{fd,fdinfo,fdstat,maps,mapstat}
                      a thread whose fd table is not the leader's (kcmp), or, where the
                      leader has exited, the live thread the process was read through:
                      what the scan read of it, as for the process (PathProc.fd_tables)
  proc/<pid>/ns/mnt, proc/<pid>/mountinfo
                      where the scan needed the process's mounts: its mount namespace, and
                      (for one process of each namespace) the mountinfo lines of /dev/shm's
                      filesystem and of hugetlbfs (readers.mounts.relevant_lines)
  meta.json           host, kernel, time, tool version, scope, what was skipped, shm_dev
Because the archive is what the scanner read, reading it back gives the same snapshot.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from typing import Dict, List, Optional

from . import __version__
from .errors import ProcessGone
from .sources.base import ProcReader, Source, now_iso
from .util.atomic import atomic_open


def _blocks(st) -> str:
    """The sidecar line's sixth field, st_blocks (absent where the stat had none)."""
    return " %d" % st[4] if len(st) > 4 and st[4] is not None else ""


class _RecordingProc(ProcReader):
    def __init__(self, inner: ProcReader, rec: "RecordingSource", base: Optional[str] = None):
        self.inner, self.rec, self.pid = inner, rec, inner.pid
        self.base = base or f"proc/{self.pid}"
        self.thread = base is not None
        self.files: Dict[str, bytes] = {}
        self.links: Dict[str, str] = {}
        self.fdstat_lines: List[str] = []
        self.mapstat_lines: List[str] = []
        self.threads: List["_RecordingProc"] = []

    def fd_tables(self):
        out = []
        for r in self.inner.fd_tables():
            if r is not None:
                r = _RecordingProc(r, self.rec, f"{self.base}/task/{r.tid}")
                self.threads.append(r)
            out.append(r)
        return out

    def fds(self):
        return self.inner.fds()

    def readlink(self, fd):
        t = self.inner.readlink(fd)
        self.links[f"{self.base}/fd/{fd}"] = t
        return t

    def fdinfo(self, fd):
        t = self.inner.fdinfo(fd)
        self.files[f"{self.base}/fdinfo/{fd}"] = t.encode("utf-8", "surrogateescape")
        return t

    def fdstat(self, fd):
        st = self.inner.fdstat(fd)
        if st is not None:
            self.fdstat_lines.append("%s %s %d %d %o" % (fd, st[0], st[1], st[2], st[3]) + _blocks(st))
        return st

    def mapstat(self, start, end):
        st = self.inner.mapstat(start, end)
        if st is not None:
            self.mapstat_lines.append("%x-%x %s %d %d %o" % (start, end, st[0], st[1], st[2], st[3])
                                      + _blocks(st))
        return st

    def _file(self, name, data):
        self.files[f"{self.base}/{name}"] = data
        return data

    def maps(self):
        return self._file("maps", self.inner.maps())

    def smaps(self):
        return self._file("smaps", self.inner.smaps())

    def status(self):
        t = self.inner.status()
        self._file("status", t.encode("utf-8", "surrogateescape"))
        try:                                   # comm, for people reading the archive by hand
            self._file("comm", self.inner.read_comm())
        except (AttributeError, ProcessGone):
            pass
        return t

    def cmdline(self):
        return self._file("cmdline", self.inner.cmdline())

    def cgroup(self):
        t = self.inner.cgroup()
        self._file("cgroup", t.encode("utf-8", "surrogateescape"))
        return t

    def close(self):
        self.inner.close()
        if not self.thread:
            self.rec.procs[self.pid] = self


class RecordingSource(Source):
    """A live source that keeps a copy of everything read through it."""
    thorough = True
    live = True

    def __init__(self, inner: Source):
        self.inner = inner
        self.label = inner.label
        self.files: Dict[str, bytes] = {}
        self.dirs: List[str] = []
        self.procs: Dict[int, _RecordingProc] = {}
        self.started = now_iso()
        self.ns: Dict[int, str] = {}           # pid: its mount namespace (ns/mnt link)
        self.mountinfo: Dict[str, str] = {}    # namespace: the mountinfo lines kept
        self.shm_dev = None

    def pids(self):
        return self.inner.pids()

    def shm_binds(self):
        """The inner source's, recording what they read: each process's mount namespace,
        and the lines of its mountinfo that can tell a buffer (once per namespace)."""
        inner = getattr(self.inner, "shm_binds", lambda: None)()
        if inner is None:
            return None
        from .readers.mounts import ShmBinds, relevant_lines
        self.shm_dev = inner.dev

        def ns_of(pid):
            ns = self.ns[pid] = inner.ns_of(pid)
            return ns

        def mountinfo_of(pid):
            text = relevant_lines(inner.mountinfo_of(pid), inner.dev)
            self.mountinfo.setdefault(self.ns.get(pid, ""), text)
            return text
        return ShmBinds(ns_of, mountinfo_of, inner.dev)

    def process(self, pid):
        return _RecordingProc(self.inner.process(pid), self)

    def read(self, rel):
        data = self.inner.read(rel)
        self.files[rel] = data
        return data

    def listdir(self, rel):
        names = self.inner.listdir(rel)
        self.dirs.append(rel)
        return names

    def taken_at(self):
        return self.started


def archived_pids(rec: RecordingSource, snap) -> list:
    """The recorded processes the archive keeps: those the scan did not skip."""
    dropped = set(snap.skipped.denied) | set(snap.skipped.vanished) | set(snap.skipped.unreadable)
    return [pid for pid in sorted(rec.procs) if pid not in dropped]


def write_archive(rec: RecordingSource, snap, path: str, pids: Optional[list] = None) -> int:
    """Write the recording as a .tar.gz atomically (temp file + rename). Returns members written."""
    meta = {
        "tool": "memtrack", "version": __version__, "taken_at": snap.taken_at,
        "host": {"hostname": snap.host.hostname, "kernel": snap.host.kernel},
        "uid": os.geteuid(),          # who captured: what root could not read, no one could
        "scope": "pids" if pids is not None else "all",
        "pids": sorted(pids) if pids is not None else None,
        "skipped": {"denied": list(snap.skipped.denied), "vanished": list(snap.skipped.vanished),
                    "unreadable": list(snap.skipped.unreadable)},
        "format": {"fdstat": "fd dev ino size mode(octal) blocks(512 B)",
                   "mapstat": "start-end dev ino size mode(octal) blocks(512 B)"},
    }
    if rec.shm_dev is not None:          # /dev/shm's device: its binds tell in mountinfo
        meta["shm_dev"] = "%02x:%02x" % rec.shm_dev
    mtime = time.time()
    members = 0
    with atomic_open(path) as raw, tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        def add_file(name, data):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), mtime, 0o444
            tf.addfile(ti, io.BytesIO(data))

        def add_link(name, target):
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname, ti.mtime, ti.mode = tarfile.SYMTYPE, target, mtime, 0o777
            tf.addfile(ti)

        def add_dir(name):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mtime, ti.mode = tarfile.DIRTYPE, mtime, 0o555
            tf.addfile(ti)

        add_file("meta.json", json.dumps(meta, indent=1).encode() + b"\n")
        add_dir("proc")
        members += 2
        for rel in sorted(rec.files):
            add_file(rel, rec.files[rel])
            members += 1
        ns_done = set()
        for pid in archived_pids(rec, snap):
            pr = rec.procs[pid]
            # a thread read for nothing (one left unread without kcmp) is left out
            threads = [t for t in pr.threads if t.links or t.files]
            if threads:
                add_dir(pr.base + "/task")
                members += 1
            for t in [pr] + threads:
                for d in (t.base, t.base + "/fd", t.base + "/fdinfo"):
                    add_dir(d)
                    members += 1
                for name in sorted(t.files):
                    add_file(name, t.files[name])
                    members += 1
                for name in sorted(t.links):
                    add_link(name, t.links[name])
                    members += 1
                for side, lines in (("fdstat", t.fdstat_lines), ("mapstat", t.mapstat_lines)):
                    if lines:
                        add_file(f"{t.base}/{side}", ("\n".join(lines) + "\n").encode())
                        members += 1
            ns = rec.ns.get(pid)
            if ns is not None:
                add_dir(pr.base + "/ns")
                add_link(pr.base + "/ns/mnt", ns)
                members += 2
                if ns not in ns_done and ns in rec.mountinfo:
                    # one process's per namespace: the others' are the same
                    ns_done.add(ns)
                    add_file(pr.base + "/mountinfo", rec.mountinfo[ns].encode("utf-8", "surrogateescape"))
                    members += 1
    return members
