"""Reading a history back: every row checked, spans turned into snapshot index ranges."""
from __future__ import annotations

import bisect
import itertools
import math
import os
import sqlite3
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import SourceError
from ..util.text import oneline
from .schema import check_schema, has_column, has_table, open_readonly, source_error, to_ints


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
    allocated: Optional[int] = None      # None: unknown (or a history from before it was kept)

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
    # process -> [(i0, i1, (rss, pss, uss, bufs, mapped, mem))]; mem None in an older history
    usage: Dict[int, List[Tuple[int, int, tuple]]]
    categories: Dict[str, List[Tuple[int, int, tuple]]]  # category -> [(i0, i1, (bytes, buffers))]
    buffer_life: Dict[int, List[Tuple[int, int]]]         # buffer -> [(i0, i1)]
    holds: List[Hold] = field(default_factory=list)
    runs: int = 1
    held_allocated: Optional[List[Optional[int]]] = None    # None: an older history
    # process -> [(i0, i1, cgroup path)]; a process in no span at i: its cgroup is unknown
    # there. None: a history from before cgroups were recorded
    cgroups: Optional[Dict[int, List[Tuple[int, int, str]]]] = None
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
                ("nattch", _is_int, "an integer"), ("allocated", _is_count, "a byte count")),
    "usage_spans": (("process", _is_id, "a row id"), ("rss", _is_count, "a byte count"),
                    ("pss", _is_count, "a byte count"), ("uss", _is_count, "a byte count"),
                    ("buffers", _is_count, "a count"), ("mapped", _is_count, "a byte count"),
                    ("mem", _is_count, "a byte count")) + _SPAN,
    "category_spans": (("category", lambda v: v is not None and _is_text(v), "text"),
                       ("bytes", _is_count, "a byte count"), ("buffers", _is_count, "a count")) + _SPAN,
    "buffer_spans": (("buffer", _is_id, "a row id"),) + _SPAN,
    "ref_spans": (("process", _is_id, "a row id"), ("buffer", _is_id, "a row id")) + _SPAN,
    "cgroup_spans": (("process", _is_id, "a row id"),
                     ("cgroup", lambda v: v is not None and _is_text(v), "text")) + _SPAN,
}


def _damaged(path: str, what: str) -> SourceError:
    return source_error(f"history database {path} is damaged: {what}")


def _checked(path: str, table: str, rows):
    """rows (id first, then the columns _REQUIRE names for table), each checked."""
    require = _REQUIRE[table]
    for r in rows:
        r = to_ints(r)                   # numbers beyond 64 bits, as bind stored them
        for (col, ok, must), v in zip(require, r[1:]):
            if not ok(v):
                shown = repr(v)
                raise _damaged(path, f"{table} row {r[0]}: {col} is {shown[:40]}"
                               f"{'...' if len(shown) > 40 else ''}, not {must}")
        yield r


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
        raise source_error(f"{path}: no such file")
    con = open_readonly(path)
    try:
        check_schema(con, path)
        con.execute("BEGIN")                                 # one consistent read
        # a million snapshots: SQLite checks the rows and each column comes as one list;
        # only a history with a bad row goes row by row in Python, to name that row
        first, last, count = con.execute("SELECT min(id), max(id), count(*) FROM snapshots").fetchone()
        if not count:
            raise source_error(f"{path}: no snapshots recorded yet")
        if progress:
            progress(f"reading {count} snapshots")
        # ids without gaps (the usual case) need no list to find a snapshot's index
        sids = range(first, last + 1) if last - first + 1 == count else _column(con, "id")
        times = _column(con, "t")
        kernel_only = _column(con, "kernel_only_bytes")
        held = _column(con, "held_bytes")
        # the columns a later memtrack added: absent from an older history, read as unknown
        newer = {t: has_column(con, t, c) for t, c in (("snapshots", "held_allocated"),
                                                        ("buffers", "allocated"), ("usage_spans", "mem"))}
        held_alloc = _column(con, "held_allocated") if newer["snapshots"] else None
        if newer["snapshots"] and (held_alloc is None or not all(_is_count(v) for v in held_alloc)):
            raise _damaged(path, "snapshots: a held_allocated value is not a byte count")
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
            "SELECT id, kind, dev, inode, size, exporter, name, category, nattch, "
            + ("allocated" if newer["buffers"] else "NULL") + " FROM buffers"))}

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
        for proc, *vals, i0, i1 in spans("usage_spans", "SELECT rowid, process, rss, pss, uss, buffers, mapped, "
                                         + ("mem" if newer["usage_spans"] else "NULL")
                                         + ", first, last FROM usage_spans", ((1, procs),)):
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
        cgroups: Optional[Dict[int, list]] = None
        if has_table(con, "cgroup_spans"):
            # a span ends with the run that opened it at the latest: an older memtrack
            # appending a run neither closes it nor says where its own processes are
            run_ends = {}
            for i0, i1 in _run_ranges(con, at):
                run_ends[i0] = i1
            starts = sorted(run_ends)
            cgroups = {}
            for proc, cg, i0, i1 in spans("cgroup_spans", "SELECT rowid, process, cgroup, first, last "
                                          "FROM cgroup_spans", ((1, procs),)):
                run_end = run_ends[starts[bisect.bisect_right(starts, i0) - 1]]
                cgroups.setdefault(proc, []).append((i0, min(i1, run_end), cg))
            for v in cgroups.values():
                v.sort()
        con.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise source_error(f"{path}: not a readable memtrack history ({exc})") from None
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
                   buffer_life={k: _merge(v) for k, v in life.items()}, holds=holds, runs=runs,
                   held_allocated=held_alloc, cgroups=cgroups)


def _run_ranges(con: sqlite3.Connection, at) -> List[Tuple[int, int]]:
    """(first index, last index) of each run's snapshots."""
    out = []
    for _run, lo, hi in con.execute("SELECT run, min(id), max(id) FROM snapshots GROUP BY run"):
        i0, i1 = at(lo), at(hi)
        if i0 is not None and i1 is not None:
            out.append((i0, i1))
    return out


def _merge(spans: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Union of index ranges; ranges that touch (i1 + 1 == next i0) join."""
    out: List[List[int]] = []
    for i0, i1 in sorted(spans):
        if out and i0 <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], i1)
        else:
            out.append([i0, i1])
    return [(a, b) for a, b in out]
