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
            dmabuf_exported_bytes, processes, buffers, denied, held_allocated)
  buffers(id, kind, dev, inode, size, exporter, name, category, nattch, allocated)
                                                                          distinct buffer states
  processes(id, pid, comm, cmdline, uid)                                  distinct processes
  refs(id, process, buffer, fds, vmas)                                    distinct references
  buffer_spans(buffer, first, last)    ref_spans(ref, first, last)
  usage_spans(process, rss, pss, uss, buffers, mapped, first, last, mem)
  category_spans(category, bytes, buffers, first, last)
  cgroup_spans(process, cgroup, first, last)      the memory controller's cgroup of a process
The last column of snapshots, buffers and usage_spans (allocated bytes; mem, a process's share
of them) came later: a history written before has not got them, and reads as unknown (None)
there; a recorder appending to it adds the columns first (NULL in the rows before).
cgroup_spans came later too: a history without it has no cgroups (report --by refuses it), a
recorder appending adds the table. An older memtrack reads every other table as before and
ignores this one; one appending to a newer history leaves its processes without a cgroup span
and does not close the open ones, so a reader ends a cgroup span with the run that opened it
(a run's snapshots are contiguous: one recorder at a time).

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

import contextlib
import os
import sqlite3
import urllib.parse
from typing import Optional

from ..errors import MemtrackError, SourceError
from ..util.text import printable

SCHEMA_VERSION = 1

DDL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs(id INTEGER PRIMARY KEY, started REAL NOT NULL, interval REAL,
    hostname TEXT, kernel TEXT);
CREATE TABLE IF NOT EXISTS snapshots(id INTEGER PRIMARY KEY, run INTEGER NOT NULL, t REAL NOT NULL,
    taken_at TEXT, complete INTEGER, held_bytes INTEGER, kernel_only_bytes INTEGER,
    dmabuf_exported_bytes INTEGER, processes INTEGER, buffers INTEGER, denied INTEGER,
    held_allocated INTEGER);
CREATE TABLE IF NOT EXISTS buffers(id INTEGER PRIMARY KEY, kind TEXT NOT NULL, dev TEXT,
    inode INTEGER, size INTEGER, exporter TEXT, name TEXT, category TEXT, nattch INTEGER,
    allocated INTEGER);
CREATE TABLE IF NOT EXISTS processes(id INTEGER PRIMARY KEY, pid INTEGER NOT NULL, comm TEXT,
    cmdline TEXT, uid INTEGER);
CREATE TABLE IF NOT EXISTS refs(id INTEGER PRIMARY KEY, process INTEGER NOT NULL,
    buffer INTEGER NOT NULL, fds TEXT NOT NULL, vmas TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS buffer_spans(buffer INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER);
CREATE TABLE IF NOT EXISTS ref_spans(ref INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER);
CREATE TABLE IF NOT EXISTS usage_spans(process INTEGER NOT NULL, rss INTEGER, pss INTEGER,
    uss INTEGER, buffers INTEGER, mapped INTEGER, first INTEGER NOT NULL, last INTEGER, mem INTEGER);
CREATE TABLE IF NOT EXISTS category_spans(category TEXT NOT NULL, bytes INTEGER, buffers INTEGER,
    first INTEGER NOT NULL, last INTEGER);
CREATE TABLE IF NOT EXISTS cgroup_spans(process INTEGER NOT NULL, cgroup TEXT, first INTEGER NOT NULL,
    last INTEGER);
"""
SNAPSHOT_COLS = ("run, t, taken_at, complete, held_bytes, kernel_only_bytes, dmabuf_exported_bytes, "
                 "processes, buffers, denied, held_allocated")
#: columns added after the first histories were written: (table, column)
LATER_COLUMNS = (("snapshots", "held_allocated"), ("buffers", "allocated"), ("usage_spans", "mem"))


def has_column(con: sqlite3.Connection, table: str, col: str) -> bool:
    return any(r[1] == col for r in con.execute(f"PRAGMA table_info({table})"))


def add_later_columns(con: sqlite3.Connection) -> None:
    """A history from before LATER_COLUMNS: the columns added (NULL, unknown, in its rows),
    and cgroup_spans (no process of the runs before has a cgroup)."""
    for table, col in LATER_COLUMNS:
        if not has_column(con, table, col):
            con.execute(f"ALTER TABLE {table} ADD COLUMN {col} INTEGER")
    con.execute(CGROUP_SPANS_DDL)


CGROUP_SPANS_DDL = next(stmt.strip() for stmt in DDL.split(";") if "cgroup_spans(" in stmt)
SPAN_TABLES = ("buffer_spans", "ref_spans", "usage_spans", "category_spans", "cgroup_spans")


def has_table(con: sqlite3.Connection, table: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                       (table,)).fetchone() is not None


def decode_text(raw: bytes) -> str:
    """The text factory of every connection: TEXT as stored, undecodable bytes as surrogates
    (never fails, unlike sqlite3's default)."""
    return raw.decode("utf-8", "surrogateescape")


#: SQLite's INTEGER is signed 64-bit; a size may be 2^64-1 and a sum of sizes more
_INT64 = range(-2 ** 63, 2 ** 63)


def bind(v):
    """(placeholder, value) binding v losslessly: a str holding surrogates cannot go to
    SQLite as str; its bytes go in as a blob cast to TEXT. An int beyond SQLite's 64 bits
    goes in as a BLOB of its decimal digits (a BLOB is the one value an INTEGER column keeps
    as given: TEXT digits would be turned into a lossy REAL); to_int() reads it back."""
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


def to_int(v):
    """A number column's value as stored by bind: a BLOB of ASCII digits is that int;
    anything else is returned as it is (and checked by the reader)."""
    if type(v) is bytes and 0 < len(v) <= 60 and v.isdigit():
        return int(v)
    return v


def to_ints(row) -> tuple:
    return tuple(map(to_int, row))


def insert(con: sqlite3.Connection, table: str, cols: str, values: tuple) -> int:
    marks, params = zip(*map(bind, values))
    return con.execute(f"INSERT INTO {table}({cols}) VALUES ({','.join(marks)})", params).lastrowid


def source_error(msg: str) -> SourceError:
    """A one-line error whose text may quote the file's contents or a path: escaped."""
    return SourceError(printable(msg))


def connect(path: str, timeout: float = 5.0, shown: Optional[str] = None) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise source_error(f"{shown or path}: {exc}") from None
    con.text_factory = decode_text
    return con


def check_schema(con: sqlite3.Connection, path: str) -> None:
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise source_error(f"{path}: not a memtrack history database ({exc})") from None
    if row is None:
        raise source_error(f"{path}: not a memtrack history database (no schema version)")
    if row[0] != str(SCHEMA_VERSION):
        raise source_error(f"{path}: history schema {str(row[0])[:40]} (this memtrack reads {SCHEMA_VERSION})")


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


def open_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection (a reader needs no write access to the file or its directory).
    A WAL database needs its -shm index, which a read-only reader cannot create where the
    directory is not writable: when no -wal file holds anything beyond the main file, the
    main file alone is the whole history and is read as immutable (a recorder that starts
    meanwhile writes to a new -wal first, which this read does not see)."""
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=5.0)
        con.text_factory = decode_text
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
        con.text_factory = decode_text
        return con
    except sqlite3.DatabaseError as exc:
        raise source_error(f"{path}: not a memtrack history database ({exc})") from None


def check_path_writable(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise MemtrackError(f"{path}: directory {d} does not exist")
