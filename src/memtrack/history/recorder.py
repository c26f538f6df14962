"""Recorder: appends snapshots to a history database, one transaction each, as spans."""
from __future__ import annotations

import os
import sqlite3
import time
from typing import Dict, Optional, Tuple

from .. import __version__
from ..account import account
from ..errors import SourceError
from ..model import Snapshot
from .schema import (DDL, SCHEMA_VERSION, SNAPSHOT_COLS, SPAN_TABLES, add_later_columns, check_schema,
                     connect, insert, source_error, to_ints, write_transaction)


def category_of(b) -> str:
    """The buffer's category (issue 3's rules) where set, else its kind."""
    return b.category or b.kind


class Recorder:
    """rec = Recorder("history.db"); rec.add(snapshot); ...; rec.close()"""

    def __init__(self, path: str, interval: Optional[float] = None):
        self.path = path
        real, exists, self._lock = _lock_exclusive(path)
        try:
            self.con = con = connect(real, shown=path)
        except BaseException:
            os.close(self._lock)
            raise
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            if exists:
                check_schema(con, path)
                with write_transaction(con):
                    add_later_columns(con)
            else:
                con.execute("BEGIN IMMEDIATE")
                for stmt in DDL.strip().split(";"):
                    if stmt.strip():
                        con.execute(stmt)
                con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                    ("schema", str(SCHEMA_VERSION)),
                    ("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
                    ("tool", f"memtrack {__version__}")])
                con.execute("COMMIT")
            self._buffers = {to_ints(row[1:]): row[0] for row in con.execute(
                "SELECT id, kind, dev, inode, size, exporter, name, category, nattch, allocated FROM buffers")}
            self._procs = {row[1:]: row[0] for row in con.execute(
                "SELECT id, pid, comm, cmdline, uid FROM processes")}
            self._refs = {row[1:]: row[0] for row in con.execute(
                "SELECT id, process, buffer, fds, vmas FROM refs")}
        except sqlite3.DatabaseError as exc:
            con.close()
            os.close(self._lock)
            raise source_error(f"{path}: {exc}") from None
        # the run's row is written with its first snapshot, in the same transaction: a run
        # that stores nothing (it failed, or was stopped before its first snapshot) leaves
        # no trace in the history
        self.run: Optional[int] = None
        self._interval = interval
        self._open: Dict[str, Dict[object, Tuple[int, object]]] = {t: {} for t in SPAN_TABLES}
        self._prev: Optional[int] = None
        self._same = None          # (buffers, processes, pids, row values) of the last snapshot
        self.snapshots = 0

    def _start_run(self, snap: Snapshot) -> None:
        """Inside the first snapshot's transaction: a previous run ended (or was killed), so
        what it left open ended at its last snapshot; then this run's row."""
        con = self.con
        last = con.execute("SELECT max(id) FROM snapshots").fetchone()[0]
        if last is not None:
            for table in SPAN_TABLES:
                con.execute(f"UPDATE {table} SET last = ? WHERE last IS NULL", (last,))
        self.run = insert(con, "runs", "started, interval, hostname, kernel",
                          (time.time(), self._interval, snap.host.hostname, snap.host.kernel))

    # Rows kept in memory beyond the last snapshot's: a long run under process churn sees
    # a new process, buffer and reference a moment, and kept a row id of each ever seen
    # (~1 KB per process: 90 MB in 10 minutes at 150 forks/s). Past this many extra, each
    # cache keeps only the last snapshot's keys; one that comes back after that gets a row
    # of its own (a span of that row starts there).
    CACHE_SLACK = 4096

    def _intern(self, cache: dict, table: str, cols: str, key: tuple, used: dict) -> int:
        rid = cache.get(key)
        if rid is None:
            rid = cache[key] = insert(self.con, table, cols, key)
        used[key] = rid
        return rid

    def _trim(self, used: Dict[str, dict]) -> None:
        for name, keep in used.items():
            if len(getattr(self, name)) > len(keep) + self.CACHE_SLACK:
                setattr(self, name, keep)

    def _spans(self, table: str, current: Dict[object, object], sid: int, insert) -> None:
        """Close the spans whose key left or whose value changed; open the new ones."""
        opened = self._open[table]
        for key in list(opened):
            rowid, value = opened[key]
            if key not in current or current[key] != value:
                self.con.execute(f"UPDATE {table} SET last = ? WHERE rowid = ?", (self._prev, rowid))
                del opened[key]
        for key, value in current.items():
            if key not in opened:
                opened[key] = (insert(key, value, sid), value)

    def add(self, snap: Snapshot, t: Optional[float] = None, pids=None) -> int:
        """Append one snapshot. pids: keep only these processes (and the buffers they hold,
        and the ones nobody holds); usage and totals still come from the whole snapshot."""
        t = time.time() if t is None else t
        if (self._same is not None and self._same[0] is snap.buffers
                and self._same[1] is snap.processes and self._same[2] == pids):
            return self._add_unchanged(snap, t)
        acct = account(snap)
        procs = snap.processes
        buffers = snap.buffers
        if pids is not None:
            procs = [p for p in procs if p.pid in pids]
            keep = {r.buffer for p in procs for r in p.refs}
            buffers = [b for b in buffers if b.id in keep or not b.holders]
        con = self.con
        try:
            with write_transaction(con):
                if self.run is None:
                    self._start_run(snap)
                sid = insert(con, "snapshots", SNAPSHOT_COLS,
                             (self.run, t, snap.taken_at, int(snap.complete), acct.held_bytes,
                              acct.kernel_only_bytes, snap.kernel.dmabuf_exported_bytes, len(procs),
                              len(buffers), len(snap.skipped.denied), acct.held_allocated))
                bids = {}
                used: Dict[str, dict] = {"_buffers": {}, "_procs": {}, "_refs": {}}
                cats: Dict[str, List[int]] = {}
                for b in buffers:
                    key = (b.kind, b.dev, b.inode, b.size, b.exporter, b.name, b.category,
                           b.kernel_count if b.kind == "sysv" else None, b.allocated)
                    bids[b.id] = self._intern(self._buffers, "buffers",
                                              "kind, dev, inode, size, exporter, name, category, nattch, "
                                              "allocated", key, used["_buffers"])
                    if b.holders and b.size is not None:
                        c = cats.setdefault(category_of(b), [0, 0])
                        c[0] += b.size
                        c[1] += 1
                refs, usage, cgroups = {}, {}, {}
                for p in procs:
                    prow = self._intern(self._procs, "processes", "pid, comm, cmdline, uid",
                                        (p.pid, p.comm, p.cmdline, p.uid), used["_procs"])
                    u = acct.processes[p.pid].total
                    usage[prow] = (u.rss, u.pss, u.uss, u.buffers, u.mapped, u.mem)
                    if p.cgroup is not None:            # None: unread; no span says it
                        cgroups[prow] = (p.cgroup,)
                    for r in p.refs:
                        key = (prow, bids[r.buffer], ",".join(map(str, r.fds)),
                               ";".join("%x-%x+%x" % v for v in r.vmas))
                        refs[self._intern(self._refs, "refs", "process, buffer, fds, vmas", key,
                                          used["_refs"])] = True

                def span(table, cols):
                    def new_span(key, value, sid):
                        vals = (key,) + (tuple(value) if isinstance(value, (tuple, list)) else ())
                        return insert(con, table, cols + ", first", vals + (sid,))
                    return new_span
                self._spans("buffer_spans", dict.fromkeys(bids.values(), True), sid, span("buffer_spans", "buffer"))
                self._spans("ref_spans", refs, sid, span("ref_spans", "ref"))
                self._spans("usage_spans", usage, sid,
                            span("usage_spans", "process, rss, pss, uss, buffers, mapped, mem"))
                self._spans("category_spans", {k: tuple(v) for k, v in cats.items()}, sid,
                            span("category_spans", "category, bytes, buffers"))
                self._spans("cgroup_spans", cgroups, sid, span("cgroup_spans", "process, cgroup"))
        except BaseException as exc:
            # the in-memory view of open spans may now be ahead of the database: start over
            self._reload_open()
            if self.snapshots == 0:
                # the run's row went with the snapshot; what the previous run left open is
                # closed again by the next try
                self.run = None
                self._open = {table: {} for table in SPAN_TABLES}
            self._same = None
            if isinstance(exc, sqlite3.Error):          # disk full, a read-only file...
                raise source_error(f"{self.path}: {exc}") from None
            raise
        self._prev = sid
        self.snapshots += 1
        self._trim(used)
        self._same = (snap.buffers, snap.processes, pids,
                      (int(snap.complete), acct.held_bytes, acct.kernel_only_bytes,
                       snap.kernel.dmabuf_exported_bytes, len(procs), len(buffers),
                       len(snap.skipped.denied), acct.held_allocated))
        return sid

    def _add_unchanged(self, snap: Snapshot, t: float) -> int:
        """The same facts as the previous snapshot (the incremental scanner hands back the
        same objects when nothing moved): one row, every span simply stays open."""
        con = self.con
        with write_transaction(con):
            sid = insert(con, "snapshots", SNAPSHOT_COLS, (self.run, t, snap.taken_at) + self._same[3])
        self._prev = sid
        self.snapshots += 1
        return sid

    def _reload_open(self) -> None:
        self._buffers = {to_ints(row[1:]): row[0] for row in self.con.execute(
            "SELECT id, kind, dev, inode, size, exporter, name, category, nattch, allocated FROM buffers")}
        self._procs = {row[1:]: row[0] for row in self.con.execute(
            "SELECT id, pid, comm, cmdline, uid FROM processes")}
        self._refs = {row[1:]: row[0] for row in self.con.execute(
            "SELECT id, process, buffer, fds, vmas FROM refs")}
        c = self.con
        self._open = {
            "buffer_spans": {r[1]: (r[0], True) for r in c.execute(
                "SELECT rowid, buffer FROM buffer_spans WHERE last IS NULL")},
            "ref_spans": {r[1]: (r[0], True) for r in c.execute(
                "SELECT rowid, ref FROM ref_spans WHERE last IS NULL")},
            "usage_spans": {r[1]: (r[0], to_ints(r[2:])) for r in c.execute(
                "SELECT rowid, process, rss, pss, uss, buffers, mapped, mem FROM usage_spans "
                "WHERE last IS NULL")},
            "category_spans": {r[1]: (r[0], to_ints(r[2:])) for r in c.execute(
                "SELECT rowid, category, bytes, buffers FROM category_spans WHERE last IS NULL")},
            "cgroup_spans": {r[1]: (r[0], (r[2],)) for r in c.execute(
                "SELECT rowid, process, cgroup FROM cgroup_spans WHERE last IS NULL")},
        }

    def close(self) -> None:
        try:
            self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self.con.close()
        os.close(self._lock)


def _lock_exclusive(path: str) -> Tuple[str, bool, int]:
    """(path with its links followed, whether it held a database, the fd of its flock).
    One recorder per file: two would close each other's spans. flock() on the database
    file itself (SQLite's own locks are fcntl() ranges: the two never interact on Linux); the
    kernel drops it when the recorder dies, however it dies.
    The path is walked as util.atomic walks an -o path (no link another user planted in
    /tmp is followed, whatever fs.protected_symlinks says), and so are the names SQLite
    puts beside it (-wal, -shm, -journal). The file is opened O_NOFOLLOW in the directory
    that was checked; SQLite opens it by the resolved name, which in a sticky directory only
    its owner (the caller, or the directory's owner) can replace."""
    import fcntl
    from ..util.atomic import check_entry, resolve
    try:
        t = resolve(path)
        try:
            for side in ("-wal", "-shm", "-journal"):
                try:
                    st = os.stat(t.name + side, dir_fd=t.dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                check_entry(t, t.name + side, st)
            fd = os.open(t.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=t.dir_fd)
            real = os.path.join(os.readlink(f"/proc/self/fd/{t.dir_fd}"), t.name)
        finally:
            os.close(t.dir_fd)
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SourceError(f"{path}: another `memtrack record` is writing to it") from None
    return real, t.st is not None and t.st.st_size > 0, fd
