"""Recorded history: snapshots appended to an SQLite database, read back as time series.

Storage is by *spans*, not by copies: a buffer, a reference (process x buffer with its fds
and mappings), a process's usage and a category's total are each one row for as long as they
stay the same, holding the first and last snapshot they were seen in (last NULL: still there
at the latest snapshot). A snapshot in which nothing changed costs one row in ``snapshots``,
so a day at 1 s on a busy desktop stays a few MB. Each snapshot is written in one
transaction (WAL journal): a recorder killed at any point loses at most the snapshot it was
writing, and readers never see half of one.

Schema version 1 (``meta`` key ``schema``):
  meta(key, value)                          schema, created_at, tool
  runs(id, started, interval, hostname, kernel)       one per `memtrack record`
  snapshots(id, run, t, taken_at, complete, held_bytes, kernel_only_bytes,
            dmabuf_exported_bytes, processes, buffers, denied)
  buffers(id, kind, dev, inode, size, exporter, name, category, nattch)   distinct buffer states
  processes(id, pid, comm, cmdline, uid)                                  distinct processes
  refs(id, process, buffer, fds, vmas)                                    distinct references
  buffer_spans(buffer, first, last)    ref_spans(ref, first, last)
  usage_spans(process, rss, pss, uss, buffers, mapped, first, last)
  category_spans(category, bytes, buffers, first, last)

Numbers are stored as SQLite INTEGERs where they fit its signed 64 bits; a size may be
2^64-1 (any user's sparse memfd is 2^63-1) and a sum of sizes more, so a number beyond
64 bits is stored in its same column as a BLOB of its decimal digits (an INTEGER column turns
TEXT digits into a lossy REAL, but keeps a BLOB as given) and read back as the exact int.
A history without such numbers is byte for byte what earlier versions wrote.

Names come from other processes and may hold bytes that are not UTF-8 (kept in memory as
surrogates, '\udcff'): they are stored as those very bytes in their TEXT column and read
back with surrogateescape, so they round-trip unchanged (a lone surrogate that stands for no
byte is stored UTF-8-encoded as-is). Every reader decodes TEXT that way: a column holding
invalid UTF-8 never stops a read.
"""
from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import math
import os
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from . import __version__
from .account import account
from .errors import MemtrackError, SourceError
from .model import Snapshot
from .util.text import human, oneline, printable

SCHEMA_VERSION = 1

_DDL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs(id INTEGER PRIMARY KEY, started REAL NOT NULL, interval REAL,
    hostname TEXT, kernel TEXT);
CREATE TABLE IF NOT EXISTS snapshots(id INTEGER PRIMARY KEY, run INTEGER NOT NULL, t REAL NOT NULL,
    taken_at TEXT, complete INTEGER, held_bytes INTEGER, kernel_only_bytes INTEGER,
    dmabuf_exported_bytes INTEGER, processes INTEGER, buffers INTEGER, denied INTEGER);
CREATE TABLE IF NOT EXISTS buffers(id INTEGER PRIMARY KEY, kind TEXT NOT NULL, dev TEXT,
    inode INTEGER, size INTEGER, exporter TEXT, name TEXT, category TEXT, nattch INTEGER);
CREATE TABLE IF NOT EXISTS processes(id INTEGER PRIMARY KEY, pid INTEGER NOT NULL, comm TEXT,
    cmdline TEXT, uid INTEGER);
CREATE TABLE IF NOT EXISTS refs(id INTEGER PRIMARY KEY, process INTEGER NOT NULL,
    buffer INTEGER NOT NULL, fds TEXT NOT NULL, vmas TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS buffer_spans(buffer INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER);
CREATE TABLE IF NOT EXISTS ref_spans(ref INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER);
CREATE TABLE IF NOT EXISTS usage_spans(process INTEGER NOT NULL, rss INTEGER, pss INTEGER,
    uss INTEGER, buffers INTEGER, mapped INTEGER, first INTEGER NOT NULL, last INTEGER);
CREATE TABLE IF NOT EXISTS category_spans(category TEXT NOT NULL, bytes INTEGER, buffers INTEGER,
    first INTEGER NOT NULL, last INTEGER);
"""
_SNAPSHOT_COLS = ("run, t, taken_at, complete, held_bytes, kernel_only_bytes, dmabuf_exported_bytes, "
                  "processes, buffers, denied")
_SPAN_TABLES = ("buffer_spans", "ref_spans", "usage_spans", "category_spans")


def category_of(b) -> str:
    """The buffer's category (issue 3's rules) where set, else its kind."""
    return b.category or b.kind


def _text(raw: bytes) -> str:
    """The text factory of every connection: TEXT as stored, undecodable bytes as surrogates
    (never fails, unlike sqlite3's default)."""
    return raw.decode("utf-8", "surrogateescape")


#: SQLite's INTEGER is signed 64-bit; a size may be 2^64-1 and a sum of sizes more
_INT64 = range(-2 ** 63, 2 ** 63)


def _param(v):
    """(placeholder, value) binding v losslessly: a str holding surrogates cannot go to
    SQLite as str; its bytes go in as a blob cast to TEXT. An int beyond SQLite's 64 bits
    goes in as a BLOB of its decimal digits (a BLOB is the one value an INTEGER column keeps
    as given: TEXT digits would be turned into a lossy REAL); _int() reads it back."""
    if type(v) is int and v not in _INT64:
        return "?", str(v).encode("ascii")
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            try:
                return "CAST(? AS TEXT)", v.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:          # a surrogate that stands for no byte
                return "CAST(? AS TEXT)", v.encode("utf-8", "surrogatepass")
    return "?", v


def _int(v):
    """A number column's value as stored by _param: a BLOB of ASCII digits is that int;
    anything else is returned as it is (and checked by the reader)."""
    if type(v) is bytes and 0 < len(v) <= 60 and v.isdigit():
        return int(v)
    return v


def _ints(row) -> tuple:
    return tuple(map(_int, row))


def _insert(con: sqlite3.Connection, table: str, cols: str, values: tuple) -> int:
    marks, params = zip(*map(_param, values))
    return con.execute(f"INSERT INTO {table}({cols}) VALUES ({','.join(marks)})", params).lastrowid


def _error(msg: str) -> SourceError:
    """A one-line error whose text may quote the file's contents or a path: escaped."""
    return SourceError(printable(msg))


def _connect(path: str, timeout: float = 5.0, shown: Optional[str] = None) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise _error(f"{shown or path}: {exc}") from None
    con.text_factory = _text
    return con


def _check_schema(con: sqlite3.Connection, path: str) -> None:
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise _error(f"{path}: not a memtrack history database ({exc})") from None
    if row is None:
        raise _error(f"{path}: not a memtrack history database (no schema version)")
    if row[0] != str(SCHEMA_VERSION):
        raise _error(f"{path}: history schema {str(row[0])[:40]} (this memtrack reads {SCHEMA_VERSION})")



@contextlib.contextmanager
def write_transaction(con):
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error: a snapshot is stored whole or
    not at all (a killed recorder loses at most the one in progress)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise

class Recorder:
    """rec = Recorder("history.db"); rec.add(snapshot); ...; rec.close()"""

    def __init__(self, path: str, interval: Optional[float] = None):
        self.path = path
        real, exists, self._lock = _lock_exclusive(path)
        try:
            self.con = con = _connect(real, shown=path)
        except BaseException:
            os.close(self._lock)
            raise
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            if exists:
                _check_schema(con, path)
            else:
                con.execute("BEGIN IMMEDIATE")
                for stmt in _DDL.strip().split(";"):
                    if stmt.strip():
                        con.execute(stmt)
                con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                    ("schema", str(SCHEMA_VERSION)),
                    ("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
                    ("tool", f"memtrack {__version__}")])
                con.execute("COMMIT")
            self._buffers = {_ints(row[1:]): row[0] for row in con.execute(
                "SELECT id, kind, dev, inode, size, exporter, name, category, nattch FROM buffers")}
            self._procs = {row[1:]: row[0] for row in con.execute(
                "SELECT id, pid, comm, cmdline, uid FROM processes")}
            self._refs = {row[1:]: row[0] for row in con.execute(
                "SELECT id, process, buffer, fds, vmas FROM refs")}
        except sqlite3.DatabaseError as exc:
            con.close()
            os.close(self._lock)
            raise _error(f"{path}: {exc}") from None
        # the run's row is written with its first snapshot, in the same transaction: a run
        # that stores nothing (it failed, or was stopped before its first snapshot) leaves
        # no trace in the history
        self.run: Optional[int] = None
        self._interval = interval
        self._open: Dict[str, Dict[object, Tuple[int, object]]] = {t: {} for t in _SPAN_TABLES}
        self._prev: Optional[int] = None
        self._same = None          # (buffers, processes, pids, row values) of the last snapshot
        self.snapshots = 0

    def _start_run(self, snap: Snapshot) -> None:
        """Inside the first snapshot's transaction: a previous run ended (or was killed), so
        what it left open ended at its last snapshot; then this run's row."""
        con = self.con
        last = con.execute("SELECT max(id) FROM snapshots").fetchone()[0]
        if last is not None:
            for table in _SPAN_TABLES:
                con.execute(f"UPDATE {table} SET last = ? WHERE last IS NULL", (last,))
        self.run = _insert(con, "runs", "started, interval, hostname, kernel",
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
            rid = cache[key] = _insert(self.con, table, cols, key)
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
                sid = _insert(con, "snapshots", _SNAPSHOT_COLS,
                              (self.run, t, snap.taken_at, int(snap.complete), acct.held_bytes,
                               acct.kernel_only_bytes, snap.kernel.dmabuf_exported_bytes, len(procs),
                               len(buffers), len(snap.skipped.denied)))
                bids = {}
                used: Dict[str, dict] = {"_buffers": {}, "_procs": {}, "_refs": {}}
                cats: Dict[str, List[int]] = {}
                for b in buffers:
                    key = (b.kind, b.dev, b.inode, b.size, b.exporter, b.name, b.category,
                           b.kernel_count if b.kind == "sysv" else None)
                    bids[b.id] = self._intern(self._buffers, "buffers",
                                              "kind, dev, inode, size, exporter, name, category, nattch", key,
                                              used["_buffers"])
                    if b.holders and b.size is not None:
                        c = cats.setdefault(category_of(b), [0, 0])
                        c[0] += b.size
                        c[1] += 1
                refs, usage = {}, {}
                for p in procs:
                    prow = self._intern(self._procs, "processes", "pid, comm, cmdline, uid",
                                        (p.pid, p.comm, p.cmdline, p.uid), used["_procs"])
                    u = acct.processes[p.pid].total
                    usage[prow] = (u.rss, u.pss, u.uss, u.buffers, u.mapped)
                    for r in p.refs:
                        key = (prow, bids[r.buffer], ",".join(map(str, r.fds)),
                               ";".join("%x-%x+%x" % v for v in r.vmas))
                        refs[self._intern(self._refs, "refs", "process, buffer, fds, vmas", key,
                                          used["_refs"])] = True

                def span(table, cols):
                    def insert(key, value, sid):
                        vals = (key,) + (tuple(value) if isinstance(value, (tuple, list)) else ())
                        return _insert(con, table, cols + ", first", vals + (sid,))
                    return insert
                self._spans("buffer_spans", dict.fromkeys(bids.values(), True), sid, span("buffer_spans", "buffer"))
                self._spans("ref_spans", refs, sid, span("ref_spans", "ref"))
                self._spans("usage_spans", usage, sid, span("usage_spans", "process, rss, pss, uss, buffers, mapped"))
                self._spans("category_spans", {k: tuple(v) for k, v in cats.items()}, sid,
                            span("category_spans", "category, bytes, buffers"))
        except BaseException as exc:
            # the in-memory view of open spans may now be ahead of the database: start over
            self._reload_open()
            if self.snapshots == 0:
                # the run's row went with the snapshot; what the previous run left open is
                # closed again by the next try
                self.run = None
                self._open = {table: {} for table in _SPAN_TABLES}
            self._same = None
            if isinstance(exc, sqlite3.Error):          # disk full, a read-only file...
                raise _error(f"{self.path}: {exc}") from None
            raise
        self._prev = sid
        self.snapshots += 1
        self._trim(used)
        self._same = (snap.buffers, snap.processes, pids,
                      (int(snap.complete), acct.held_bytes, acct.kernel_only_bytes,
                       snap.kernel.dmabuf_exported_bytes, len(procs), len(buffers),
                       len(snap.skipped.denied)))
        return sid

    def _add_unchanged(self, snap: Snapshot, t: float) -> int:
        """The same facts as the previous snapshot (the incremental scanner hands back the
        same objects when nothing moved): one row, every span simply stays open."""
        con = self.con
        with write_transaction(con):
            sid = _insert(con, "snapshots", _SNAPSHOT_COLS, (self.run, t, snap.taken_at) + self._same[3])
        self._prev = sid
        self.snapshots += 1
        return sid

    def _reload_open(self) -> None:
        self._buffers = {_ints(row[1:]): row[0] for row in self.con.execute(
            "SELECT id, kind, dev, inode, size, exporter, name, category, nattch FROM buffers")}
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
            "usage_spans": {r[1]: (r[0], _ints(r[2:])) for r in c.execute(
                "SELECT rowid, process, rss, pss, uss, buffers, mapped FROM usage_spans WHERE last IS NULL")},
            "category_spans": {r[1]: (r[0], _ints(r[2:])) for r in c.execute(
                "SELECT rowid, category, bytes, buffers FROM category_spans WHERE last IS NULL")},
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
    from .util.atomic import check_entry, resolve
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


# -- reading ----------------------------------------------------------------------------------

@dataclass
class ProcRow:
    id: int
    pid: int
    comm: str
    cmdline: str
    uid: Optional[int]

    @property
    def name(self) -> str:
        return self.cmdline or self.comm or "?"

    @property
    def short(self) -> str:
        return oneline(self.name, 60)


@dataclass
class BufRow:
    id: int
    kind: str
    dev: Optional[str]
    inode: Optional[int]
    size: Optional[int]
    exporter: Optional[str]
    name: Optional[str]
    category: Optional[str]
    nattch: Optional[int]

    @property
    def label(self) -> str:
        ident = f"{self.kind}:{self.inode if self.inode is not None else '?'}"
        return ident + (f" ({self.name})" if self.name else "")


@dataclass
class Hold:
    """One process holding one buffer, over consecutive snapshots [first, last] (indexes)."""
    process: int
    buffer: int
    first: int
    last: int
    open_at_end: bool


@dataclass
class History:
    path: str
    times: List[float]                       # snapshot index -> unix time
    sids: List[int]                          # snapshot index -> snapshot id
    kernel_only: List[Optional[int]]
    held: List[Optional[int]]
    processes: Dict[int, ProcRow]
    buffers: Dict[int, BufRow]
    usage: Dict[int, List[Tuple[int, int, tuple]]]       # process -> [(i0, i1, (rss,pss,uss,bufs,mapped))]
    categories: Dict[str, List[Tuple[int, int, tuple]]]  # category -> [(i0, i1, (bytes, buffers))]
    buffer_life: Dict[int, List[Tuple[int, int]]]         # buffer -> [(i0, i1)]
    holds: List[Hold] = field(default_factory=list)
    runs: int = 1
    _prefix: Optional[Tuple[List[int], List[int]]] = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.times)

    def value_runs(self, spans, col: int, lo: int = 0, hi: Optional[int] = None) -> List[Tuple[int, int, int]]:
        """(i0, i1, value) covering snapshots lo..hi (default: all), 0 where no span is:
        what series() holds, one entry per span and per gap instead of one per snapshot."""
        hi = len(self.times) - 1 if hi is None else hi
        out: List[Tuple[int, int, int]] = []
        at = lo
        for i0, i1, vals in sorted(spans, key=lambda s: s[0]):
            i0, i1 = max(i0, at), min(i1, hi)
            if i1 < i0:
                continue
            if i0 > at:
                out.append((at, i0 - 1, 0))
            out.append((i0, i1, vals[col]))
            at = i1 + 1
        if at <= hi:
            out.append((at, hi, 0))
        return out

    def sampled(self, spans, col: int, idx: Sequence[int]) -> List[int]:
        """series(spans, col) at the sorted snapshot indexes idx only."""
        runs = self.value_runs(spans, col)
        out, r = [], 0
        for i in idx:
            while runs[r][1] < i:
                r += 1
            out.append(runs[r][2])
        return out

    @property
    def prefix(self) -> Tuple[List[int], List[int]]:
        if self._prefix is None:
            self._prefix = prefix_sums(self.times)
        return self._prefix

    def series(self, spans, col: int) -> List[int]:
        """A dense per-snapshot series from spans (0 where absent)."""
        out = [0] * len(self.times)
        for i0, i1, vals in spans:
            v = vals[col]
            for i in range(i0, i1 + 1):
                out[i] = v
        return out


#: values a history can hold: a size is at most 2^64-1 and a sum of sizes (held bytes, a
#: process's pss) may be several of those, far below 2^128; a time is a Unix time before the
#: year 5138 (anything later, or negative, is no clock reading)
_MAX_COUNT = 2 ** 128 - 1
_MAX_TIME = 1e11


def _is_count(v) -> bool:
    return v is None or (type(v) is int and 0 <= v <= _MAX_COUNT)


def _is_int(v) -> bool:
    return v is None or type(v) is int


def _is_text(v) -> bool:
    return v is None or type(v) is str


def _is_id(v) -> bool:
    return type(v) is int


def _is_time(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and 0 <= v <= _MAX_TIME


_SPAN = (("first", _is_id, "a snapshot id"), ("last", _is_int, "a snapshot id"))

#: (column, check, what it must be) per table, in the order load() selects them; a row that
#: fails makes the whole history unreadable: a report built over silently skipped rows would
#: show series with holes and growth or leaks that never happened, and a damaged file is worth
#: knowing about (the file itself is left as it is)
_REQUIRE = {
    "snapshots": (("t", _is_time, "a Unix time"), ("kernel_only_bytes", _is_count, "a byte count"),
                  ("held_bytes", _is_count, "a byte count")),
    "processes": (("pid", lambda v: v is not None and _is_count(v), "a process id"),
                  ("comm", _is_text, "text"), ("cmdline", _is_text, "text"), ("uid", _is_int, "an integer")),
    "buffers": (("kind", lambda v: v is not None and _is_text(v), "text"), ("dev", _is_text, "text"),
                ("inode", _is_int, "an integer"), ("size", _is_count, "a byte count"),
                ("exporter", _is_text, "text"), ("name", _is_text, "text"), ("category", _is_text, "text"),
                ("nattch", _is_int, "an integer")),
    "usage_spans": (("process", _is_id, "a row id"), ("rss", _is_count, "a byte count"),
                    ("pss", _is_count, "a byte count"), ("uss", _is_count, "a byte count"),
                    ("buffers", _is_count, "a count"), ("mapped", _is_count, "a byte count")) + _SPAN,
    "category_spans": (("category", lambda v: v is not None and _is_text(v), "text"),
                       ("bytes", _is_count, "a byte count"), ("buffers", _is_count, "a count")) + _SPAN,
    "buffer_spans": (("buffer", _is_id, "a row id"),) + _SPAN,
    "ref_spans": (("process", _is_id, "a row id"), ("buffer", _is_id, "a row id")) + _SPAN,
}


def _damaged(path: str, what: str) -> SourceError:
    return _error(f"history database {path} is damaged: {what}")


def _checked(path: str, table: str, rows):
    """rows (id first, then the columns _REQUIRE names for table), each checked."""
    require = _REQUIRE[table]
    for r in rows:
        r = _ints(r)                   # numbers beyond 64 bits, as _param stored them
        for (col, ok, must), v in zip(require, r[1:]):
            if not ok(v):
                shown = repr(v)
                raise _damaged(path, f"{table} row {r[0]}: {col} is {shown[:40]}"
                               f"{'...' if len(shown) > 40 else ''}, not {must}")
        yield r


def _open_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection (a reader needs no write access to the file or its directory).
    A WAL database needs its -shm index, which a read-only reader cannot create where the
    directory is not writable: when no -wal file holds anything beyond the main file, the
    main file alone is the whole history and is read as immutable (a recorder that starts
    meanwhile writes to a new -wal first, which this read does not see)."""
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=5.0)
        con.text_factory = _text
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return con
        except sqlite3.OperationalError:
            con.close()
            try:
                wal_idle = os.path.getsize(path + "-wal") == 0
            except OSError:
                wal_idle = True
            if not wal_idle:
                raise
        con = sqlite3.connect(uri + "&immutable=1", uri=True, timeout=5.0)
        con.text_factory = _text
        return con
    except sqlite3.DatabaseError as exc:
        raise _error(f"{path}: not a memtrack history database ({exc})") from None


#: snapshots rows that fail _REQUIRE (a BLOB, a number beyond 64 bits, is checked in Python)
_BAD_SNAPSHOTS = """SELECT count(*) FROM snapshots WHERE NOT (
    typeof(t) IN ('integer', 'real') AND t >= 0 AND t <= 1e11
    AND (typeof(kernel_only_bytes) IN ('null', 'blob') OR
         (typeof(kernel_only_bytes) = 'integer' AND kernel_only_bytes >= 0))
    AND (typeof(held_bytes) IN ('null', 'blob') OR (typeof(held_bytes) = 'integer' AND held_bytes >= 0)))"""


def _column(con: sqlite3.Connection, col: str) -> Optional[list]:
    """One column of every snapshot, in order; numbers beyond 64 bits (BLOBs of digits) as
    ints; None when such a BLOB holds no count (the row-by-row check then names it)."""
    out = [r[0] for r in con.execute(f"SELECT {col} FROM snapshots ORDER BY id")]
    if col != "t" and con.execute(f"SELECT 1 FROM snapshots WHERE typeof({col}) = 'blob'").fetchone():
        out = [int(v) if type(v) is bytes and 0 < len(v) <= 60 and v.isdigit() else v for v in out]
        if not all(v is None or (type(v) is int and 0 <= v <= _MAX_COUNT) for v in out):
            return None
    return out


def load(path: str, progress=None) -> History:
    """The history in the database at path. progress(step), if given, is told each step."""
    if not os.path.exists(path):
        raise _error(f"{path}: no such file")
    con = _open_readonly(path)
    try:
        _check_schema(con, path)
        con.execute("BEGIN")                                 # one consistent read
        # a million snapshots: SQLite checks the rows and each column comes as one list;
        # only a history with a bad row goes row by row in Python, to name that row
        first, last, count = con.execute("SELECT min(id), max(id), count(*) FROM snapshots").fetchone()
        if not count:
            raise _error(f"{path}: no snapshots recorded yet")
        if progress:
            progress(f"reading {count} snapshots")
        # ids without gaps (the usual case) need no list to find a snapshot's index
        sids = range(first, last + 1) if last - first + 1 == count else _column(con, "id")
        times = _column(con, "t")
        kernel_only = _column(con, "kernel_only_bytes")
        held = _column(con, "held_bytes")
        if con.execute(_BAD_SNAPSHOTS).fetchone()[0] or kernel_only is None or held is None:
            for _ in _checked(path, "snapshots", con.execute(
                    "SELECT id, t, kernel_only_bytes, held_bytes FROM snapshots ORDER BY id")):
                pass
            raise _damaged(path, "snapshots: a row holds what is not a number")   # not reached
        end = count - 1

        def at(sid):
            """The index of snapshot sid (ids ascend), None when it is not there."""
            if type(sid) is not int:
                return None
            i = bisect.bisect_left(sids, sid)
            return i if i <= end and sids[i] == sid else None
        # runs that stored a snapshot (an older memtrack left a row for a run that failed)
        runs = con.execute("SELECT count(DISTINCT run) FROM snapshots").fetchone()[0]

        def rng(table, first, last):
            """Snapshot indexes of a span; (None, None) when its snapshots are not there."""
            i0 = at(first)
            i1 = end if last is None else at(last)
            if i0 is not None and i1 is not None and i0 > i1:
                raise _damaged(path, f"{table}: a span ends (snapshot {last}) before it begins "
                                     f"(snapshot {first})")
            return i0, i1

        if progress:
            progress("reading processes, buffers and spans")
        procs = {r[0]: ProcRow(*r) for r in _checked(path, "processes", con.execute(
            "SELECT id, pid, comm, cmdline, uid FROM processes"))}
        bufs = {r[0]: BufRow(*r) for r in _checked(path, "buffers", con.execute(
            "SELECT id, kind, dev, inode, size, exporter, name, category, nattch FROM buffers"))}

        def spans(table, sql, refers):
            """Rows of a span table: (its columns..., i0, i1) for the spans whose snapshots
            are there (a span may outlive its snapshots: those rows are not shown)."""
            for r in _checked(path, table, con.execute(sql)):
                for col, rows in refers:
                    if r[col] not in rows:
                        raise _damaged(path, f"{table} row {r[0]}: {_REQUIRE[table][col - 1][0]} "
                                             f"{r[col]} is not in the history")
                i0, i1 = rng(table, r[-2], r[-1])
                if i0 is not None and i1 is not None:
                    yield r[1:-2] + (i0, i1)

        usage: Dict[int, list] = {}
        for proc, *vals, i0, i1 in spans("usage_spans", "SELECT rowid, process, rss, pss, uss, buffers, "
                                         "mapped, first, last FROM usage_spans", ((1, procs),)):
            usage.setdefault(proc, []).append((i0, i1, tuple(vals)))
        cats: Dict[str, list] = {}
        for cat, nbytes, nbufs, i0, i1 in spans("category_spans", "SELECT rowid, category, bytes, buffers, "
                                                "first, last FROM category_spans", ()):
            cats.setdefault(cat, []).append((i0, i1, (nbytes, nbufs)))
        life: Dict[int, list] = {}
        for buf, i0, i1 in spans("buffer_spans", "SELECT rowid, buffer, first, last FROM buffer_spans",
                                 ((1, bufs),)):
            life.setdefault(buf, []).append((i0, i1))
        per: Dict[Tuple[int, int], list] = {}
        for proc, buf, i0, i1 in spans("ref_spans", "SELECT ref_spans.rowid, refs.process, refs.buffer, "
                                       "ref_spans.first, ref_spans.last "
                                       "FROM ref_spans JOIN refs ON refs.id = ref_spans.ref",
                                       ((1, procs), (2, bufs))):
            per.setdefault((proc, buf), []).append((i0, i1))
        con.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise _error(f"{path}: not a readable memtrack history ({exc})") from None
    finally:
        con.close()
    holds = []
    for (proc, buf), ranges in per.items():
        for i0, i1 in _merge(ranges):
            holds.append(Hold(proc, buf, i0, i1, i1 == end))
    holds.sort(key=lambda h: (h.first, h.process, h.buffer))
    for v in list(usage.values()) + list(cats.values()):
        v.sort()
    return History(path=path, times=times, sids=sids, kernel_only=kernel_only, held=held,
                   processes=procs, buffers=bufs, usage=usage, categories=cats,
                   buffer_life={k: _merge(v) for k, v in life.items()}, holds=holds, runs=runs)


def _merge(spans: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Union of index ranges; ranges that touch (i1 + 1 == next i0) join."""
    out: List[List[int]] = []
    for i0, i1 in sorted(spans):
        if out and i0 <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], i1)
        else:
            out.append([i0, i1])
    return [(a, b) for a, b in out]


# -- analysis ---------------------------------------------------------------------------------

@dataclass
class Trend:
    start: int
    end: int
    peak: int
    peak_t: float
    slope: float            # per second, least squares over every snapshot in the range
    r2: float
    rises: int
    drops: int
    rise_total: int
    drop_total: int

    @property
    def growth(self) -> int:
        return self.end - self.start

    @property
    def steady_growth(self) -> bool:
        """Grows, keeps growing, and almost never gives back: how a leak looks."""
        return (self.rises >= 3 and self.end > self.start and self.slope > 0 and self.r2 >= 0.8
                and self.drop_total <= 0.1 * self.rise_total)

    def as_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "peak": self.peak, "peak_t": self.peak_t,
                "growth": self.growth, "slope_per_s": round(self.slope, 3), "r2": round(self.r2, 3),
                "rises": self.rises, "drops": self.drops}


def prefix_sums(times: Sequence[float]) -> Tuple[List[int], List[int]]:
    """Running sums of t and t*t, t in whole microseconds since the first snapshot: a run of
    snapshots then adds its share to a least-squares fit in one step, not one per snapshot.
    Ints, not floats: a short window late in a long history is the difference of two sums
    near 10^16, where a float's rounding would swamp it."""
    if not times:
        return [0], [0]
    t0 = times[0]
    us = [round((t - t0) * 1e6) for t in times]
    return (list(itertools.accumulate(us, initial=0)),
            list(itertools.accumulate((u * u for u in us), initial=0)))


def runs_of(values: Sequence[Optional[int]]) -> List[Tuple[int, int, int]]:
    """(i0, i1, v): the maximal runs of one value; None (unknown) leaves a hole."""
    out: List[Tuple[int, int, int]] = []
    i0 = 0
    n = len(values)
    while i0 < n:
        v = values[i0]
        i1 = i0
        while i1 + 1 < n and values[i1 + 1] == v:
            i1 += 1
        if v is not None:
            out.append((i0, i1, v))
        i0 = i1 + 1
    return out


def trend(times: Sequence[float], values: Sequence[Optional[int]]) -> Optional[Trend]:
    return trend_runs(times, runs_of(values), prefix_sums(times))


def trend_runs(times: Sequence[float], runs: Sequence[Tuple[int, int, int]],
               prefix: Tuple[List[int], List[int]]) -> Optional[Trend]:
    """The least-squares trend of a series given as runs of one value (as spans store it):
    the cost is per run, so a million snapshots with a few changes take no time."""
    if not runs:
        return None
    p1, p2 = prefix
    # exact integer sums (microseconds, bytes): neither a 2^64 level nor a late window loses
    # the changes to rounding; one division per result
    n = st = sv = stt = svv = stv = 0
    for i0, i1, v in runs:
        k = i1 - i0 + 1
        s1 = p1[i1 + 1] - p1[i0]
        n += k
        st += s1
        stt += p2[i1 + 1] - p2[i0]
        sv += v * k
        svv += v * v * k
        stv += v * s1
    dt = n * stt - st * st
    dv = n * svv - sv * sv
    cov = n * stv - st * sv
    slope = cov * 1_000_000 / dt if dt > 0 else 0.0         # per second
    r2 = (cov * cov) / (dt * dv) if dt > 0 and dv > 0 else 0.0
    rises = drops = up = down = 0
    peak, peak_t = runs[0][2], times[runs[0][0]]
    for (_, _, a), (i0, _, b) in zip(runs, runs[1:]):
        if b > a:
            rises += 1
            up += b - a
        elif b < a:
            drops += 1
            down += a - b
        if b > peak:
            peak, peak_t = b, times[i0]
    return Trend(runs[0][2], runs[-1][2], peak, peak_t, slope, r2, rises, drops, up, down)


@dataclass
class Finding:
    kind: str               # "growth" | "unreleased" | "sysv-unattached" | "kernel-only-growth"
    subject: str
    message: str
    evidence: dict

    def as_dict(self) -> dict:
        return {"kind": self.kind, "subject": self.subject, "message": self.message, "evidence": self.evidence}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def analyze(h: History, pids=None, min_unreleased: int = 3) -> dict:
    """Per process and per category: peak, growth, slope; suspected leaks with evidence."""
    T = h.times
    n = len(T)
    procs_out, findings = [], []
    for prow_id, spans in h.usage.items():
        prow = h.processes[prow_id]
        if pids is not None and prow.pid not in pids:
            continue
        i0, i1 = spans[0][0], max(s[1] for s in spans)
        tr_pss, tr_rss, tr_buf = (trend_runs(T, h.value_runs(spans, col, i0, i1), h.prefix)
                                  for col in (1, 0, 3))
        entry = {"pid": prow.pid, "comm": prow.comm, "name": prow.short, "cmdline": prow.cmdline,
                 "first_seen": _iso(T[i0]), "last_seen": _iso(T[i1]), "snapshots": i1 - i0 + 1,
                 "pss": tr_pss.as_dict(), "rss": tr_rss.as_dict(), "buffers": tr_buf.as_dict()}
        procs_out.append(entry)
        subject = f"pid {prow.pid} ({prow.short})"
        for label, tr, fmt in (("held bytes", tr_rss, human), ("buffer count", tr_buf, str)):
            if tr.steady_growth:
                rate = (fmt(int(round(tr.slope))) if fmt is human else f"{tr.slope:.2f}")
                findings.append(Finding("growth", subject,
                                        f"{label} grew steadily from {fmt(tr.start)} to {fmt(tr.end)} "
                                        f"(+{rate}/s, {tr.rises} rises, {tr.drops} drops)",
                                        dict(tr.as_dict(), metric=label, pid=prow.pid,
                                             first_seen=_iso(T[i0]), last_seen=_iso(T[i1]))))
    # buffers acquired after a process was first seen and never released
    first_seen = {pid: min(s[0] for s in spans) for pid, spans in h.usage.items()}
    acquired: Dict[int, list] = {}
    for hold in h.holds:
        if hold.first > first_seen.get(hold.process, 0):
            acquired.setdefault(hold.process, []).append(hold)
    for prow_id, holds in acquired.items():
        prow = h.processes[prow_id]
        if pids is not None and prow.pid not in pids:
            continue
        kept = [x for x in holds if x.open_at_end]
        if len(kept) >= min_unreleased and len(kept) * 2 >= len(holds):
            bufs = [h.buffers[x.buffer] for x in kept]
            total = sum(b.size or 0 for b in bufs)
            findings.append(Finding(
                "unreleased", f"pid {prow.pid} ({prow.short})",
                f"{len(kept)} of {len(holds)} buffers acquired during the recording were never "
                f"released ({human(total)})",
                {"pid": prow.pid, "acquired": len(holds), "never_released": len(kept), "bytes": total,
                 "first_acquired": _iso(T[kept[0].first]), "last_acquired": _iso(T[kept[-1].first]),
                 "buffers": [b.label for b in bufs[:20]]}))
    # SysV segments no process ever attached while we watched
    for bid, life in h.buffer_life.items():
        b = h.buffers[bid]
        if b.kind != "sysv" or b.nattch not in (0, None):
            continue
        if any(x.buffer == bid for x in h.holds):
            continue
        f0, f1 = life[0][0], life[-1][1]
        if f1 > f0:
            findings.append(Finding("sysv-unattached", f"SysV segment {b.name or ''} shmid {b.inode}",
                                    f"{human(b.size)} with no process attached (nattch 0) for the "
                                    f"whole time it was seen",
                                    {"shmid": b.inode, "key": b.name, "size": b.size,
                                     "first_seen": _iso(T[f0]), "last_seen": _iso(T[f1])}))
    ko = trend_runs(T, runs_of(h.kernel_only), h.prefix)
    if ko is not None and ko.steady_growth:
        findings.append(Finding("kernel-only-growth", "kernel",
                                f"kernel-only bytes grew steadily from {human(ko.start)} to {human(ko.end)} "
                                f"(+{human(int(round(ko.slope)))}/s)",
                                ko.as_dict()))
    cats_out = []
    for cat, spans in sorted(h.categories.items()):
        tr = trend_runs(T, h.value_runs(spans, 0), h.prefix)
        trb = trend_runs(T, h.value_runs(spans, 1), h.prefix)
        cats_out.append({"category": cat, "bytes": tr.as_dict(), "buffers": trb.as_dict()})
        if tr.steady_growth and pids is None:
            findings.append(Finding("growth", f"category {cat}",
                                    f"held bytes grew steadily from {human(tr.start)} to {human(tr.end)} "
                                    f"(+{human(int(round(tr.slope)))}/s)",
                                    dict(tr.as_dict(), category=cat)))
    procs_out.sort(key=lambda e: (-e["pss"]["peak"], e["pid"]))
    cats_out.sort(key=lambda e: -e["bytes"]["peak"])
    return {"history": h.path, "snapshots": n, "runs": h.runs,
            "start": _iso(T[0]), "end": _iso(T[-1]), "seconds": round(T[-1] - T[0], 3),
            "processes": procs_out, "categories": cats_out,
            "kernel_only": ko.as_dict() if ko else None,
            "suspects": [f.as_dict() for f in findings]}


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=1)


def check_path_writable(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise MemtrackError(f"{path}: directory {d} does not exist")
