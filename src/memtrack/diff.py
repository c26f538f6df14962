"""Diff of two snapshots: buffers created, freed and resized, filled and trimmed (their
allocated bytes grew or shrank: pages written, or punched out, swapped in or freed);
references acquired and released per process (the install/uninstall events of the memtrack
proposal); usage deltas.

Pure functions of two Snapshots. Buffers are matched by identity (kind, dev, inode), not by
id string: ids can be qualified differently in two snapshots. An inode can be reused once
its buffer is freed, so a match whose exporter or name differs, or whose size differs for a
kind whose size is fixed at creation (dma-buf, SysV, ashmem, shared anonymous), is a free of
the old buffer and a create of the new one. memfds and POSIX shm can be ftruncate()d: for
them a size change alone is a resize.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .account import account
from .errors import MemtrackError
from .model import Buffer, Snapshot
from .util.text import printable

#: kinds whose size can change after creation (ftruncate)
RESIZABLE = frozenset(("memfd", "shm"))

Identity = Tuple[str, Optional[str], object]


class DiffError(MemtrackError):
    """A snapshot diff() cannot compare: it contradicts itself (damaged, or filtered by hand)."""


def _check(snap: Snapshot, which: str) -> None:
    """What diff() and account() rely on: buffer ids and pids unique, every reference naming
    a buffer of the same snapshot."""
    ids = set()
    for b in snap.buffers:
        if b.id in ids:
            raise DiffError(printable(f"snapshot {which}: buffer {b.id!r} listed twice"))
        ids.add(b.id)
    pids = set()
    for p in snap.processes:
        if p.pid in pids:
            raise DiffError(f"snapshot {which}: pid {p.pid} listed twice")
        pids.add(p.pid)
        for r in p.refs:
            if r.buffer not in ids:
                raise DiffError(printable(f"snapshot {which}: pid {p.pid} refers to buffer {r.buffer!r}, "
                                          f"which the snapshot does not list (damaged or filtered)"))


def identity(b: Buffer) -> Identity:
    """(kind, dev, inode); a pre-5.3 anonymous dma-buf has no inode: its id is all there is."""
    if b.inode is None:
        return (b.kind, None, b.id)
    return (b.kind, b.dev, b.inode)


@dataclass(frozen=True)
class BufferEvent:
    action: str                        # "create" | "free" | "resize" | "fill" | "trim"
    buffer: Buffer                     # as in B for create/resize/fill/trim, as in A for free
    old_size: Optional[int] = None     # resize only
    reused: bool = False               # create/free caused by inode reuse
    old_allocated: Optional[int] = None   # fill and trim: the allocated bytes in A

    def as_dict(self) -> dict:
        b = self.buffer
        d = {"action": self.action, "buffer": b.id, "kind": b.kind, "dev": b.dev, "inode": b.inode,
             "size": b.size, "exporter": b.exporter, "name": b.name, "category": b.category,
             "holders": list(b.holders)}
        if self.action == "resize":
            d["old_size"] = self.old_size
        if self.action in ("fill", "trim"):
            d["allocated"] = b.allocated
            d["old_allocated"] = self.old_allocated
        if self.reused:
            d["inode_reused"] = True
        return d


@dataclass(frozen=True)
class RefEvent:
    """One fd or one mapping of a buffer appearing in (acquire) or leaving (release) a process."""
    pid: int
    comm: str
    action: str                        # "acquire" | "release"
    via: str                           # "fd" | "map"
    buffer: Buffer                     # as in B for acquire, as in A for release
    fd: Optional[int] = None
    vma: Optional[Tuple[int, int, int]] = None

    def as_dict(self) -> dict:
        b = self.buffer
        d = {"pid": self.pid, "comm": self.comm, "action": self.action, "via": self.via,
             "buffer": b.id, "kind": b.kind, "size": b.size, "name": b.name}
        if self.via == "fd":
            d["fd"] = self.fd
        else:
            d["vma"] = list(self.vma)
        return d

    def describe(self) -> str:
        what = f"fd {self.fd}" if self.via == "fd" else "map %x-%x" % (self.vma[0], self.vma[1])
        return f"{'+' if self.action == 'acquire' else '-'}{what} {self.buffer.id}"


@dataclass(frozen=True)
class UsageDelta:
    pid: int
    name: str
    comm: str
    before: Dict[str, int]             # rss, pss, uss, buffers (zeros when absent)
    after: Dict[str, int]
    status: str = ""                   # "new": holds nothing in A; "gone": holds nothing in B
    mem: Tuple[int, int] = (0, 0)      # mem in A, in B (a filled buffer moves it alone)

    def delta(self, key: str) -> int:
        return self.after[key] - self.before[key]

    def as_dict(self) -> dict:
        return {"pid": self.pid, "comm": self.comm, "name": self.name, "status": self.status,
                "before": dict(self.before, mem=self.mem[0]), "after": dict(self.after, mem=self.mem[1]),
                "delta": dict({k: self.delta(k) for k in self.after}, mem=self.mem[1] - self.mem[0])}


@dataclass(frozen=True)
class Diff:
    a: Snapshot
    b: Snapshot
    buffers: Tuple[BufferEvent, ...]
    refs: Tuple[RefEvent, ...]
    processes: Tuple[UsageDelta, ...]      # largest |pss delta| first, unchanged left out
    totals: Dict[str, Dict[str, Optional[int]]] = field(default_factory=dict)

    def of(self, action: str) -> List[BufferEvent]:
        return [e for e in self.buffers if e.action == action]

    def to_dict(self) -> dict:
        return {
            "schema": 1,
            "a": {"taken_at": self.a.taken_at, "source": self.a.source},
            "b": {"taken_at": self.b.taken_at, "source": self.b.source},
            "buffers": {"created": [e.as_dict() for e in self.of("create")],
                        "freed": [e.as_dict() for e in self.of("free")],
                        "resized": [e.as_dict() for e in self.of("resize")],
                        "filled": [e.as_dict() for e in self.of("fill")],
                        "trimmed": [e.as_dict() for e in self.of("trim")]},
            "events": [e.as_dict() for e in self.refs],
            "processes": [d.as_dict() for d in self.processes],
            "totals": self.totals,
        }


_KEYS = ("rss", "pss", "uss", "buffers")


def _match(a: Snapshot, b: Snapshot) -> Dict[str, Optional[Buffer]]:
    """A's buffer id -> the same buffer in B (None: not there, or its inode was reused)."""
    by_ident = {identity(x): x for x in b.buffers}
    # a device may be unknown on one side (an fd seen through fdinfo only): fall back to
    # (kind, inode) when that names exactly one buffer
    loose: Dict[tuple, List[Buffer]] = {}
    for x in b.buffers:
        if x.inode is not None:
            loose.setdefault((x.kind, x.inode), []).append(x)
    out = {}
    for x in a.buffers:
        y = by_ident.get(identity(x))
        if y is None and x.inode is not None:
            cands = loose.get((x.kind, x.inode), [])
            if len(cands) == 1 and (x.dev is None or cands[0].dev is None):
                y = cands[0]
        out[x.id] = y
    return out


def _same_object(x: Buffer, y: Buffer) -> bool:
    def differs(u, v):
        return u is not None and v is not None and u != v
    if differs(x.exporter, y.exporter) or differs(x.name, y.name):
        return False
    if x.kind not in RESIZABLE and differs(x.size, y.size):
        return False
    return True


def diff(a: Snapshot, b: Snapshot) -> Diff:
    _check(a, "A")
    _check(b, "B")
    matched = _match(a, b)
    a_to_b: Dict[str, str] = {}
    events: List[BufferEvent] = []
    reused_b = set()
    taken_b = set()
    for x in a.buffers:
        y = matched[x.id]
        if y is not None and y.id not in taken_b and _same_object(x, y):
            taken_b.add(y.id)
            a_to_b[x.id] = y.id
            if x.size != y.size and x.size is not None and y.size is not None:
                events.append(BufferEvent("resize", y, old_size=x.size))
            if x.allocated is not None and y.allocated is not None and x.allocated != y.allocated \
                    and x.kind != "dmabuf":      # a dma-buf's allocated is its size: no news
                events.append(BufferEvent("fill" if y.allocated > x.allocated else "trim", y,
                                          old_allocated=x.allocated))
        elif y is not None:
            events.append(BufferEvent("free", x, reused=True))
            reused_b.add(y.id)
        else:
            events.append(BufferEvent("free", x))
    for y in b.buffers:
        if y.id not in taken_b:
            events.append(BufferEvent("create", y, reused=y.id in reused_b))
    order = {"free": 0, "create": 1, "resize": 2, "fill": 3, "trim": 4}
    events.sort(key=lambda e: (order[e.action], e.buffer.kind, str(e.buffer.dev),
                               e.buffer.inode if e.buffer.inode is not None else -1, e.buffer.id))

    # references: compare per process, with A's buffers renamed to B's ids where matched
    refs: List[RefEvent] = []
    pa, pb = a.process_map, b.process_map
    for pid in sorted(set(pa) | set(pb)):
        comm = (pb.get(pid) or pa.get(pid)).comm
        old = {}
        for r in (pa[pid].refs if pid in pa else ()):
            old[a_to_b.get(r.buffer, ("A", r.buffer))] = r       # unmatched: never one of B's ids
        new = {r.buffer: r for r in (pb[pid].refs if pid in pb else ())}
        released, acquired = [], []       # per process: releases first, each by buffer id
        for key in set(old) | set(new):
            ra, rb = old.get(key), new.get(key)
            fa = set(ra.fds) if ra else set()
            fb = set(rb.fds) if rb else set()
            va = set(ra.vmas) if ra else set()
            vb = set(rb.vmas) if rb else set()
            if ra:
                buf_a = a.buffer(ra.buffer)
                released += [RefEvent(pid, comm, "release", "fd", buf_a, fd=fd) for fd in fa - fb]
                released += [RefEvent(pid, comm, "release", "map", buf_a, vma=v) for v in va - vb]
            if rb:
                buf_b = b.buffer(rb.buffer)
                acquired += [RefEvent(pid, comm, "acquire", "fd", buf_b, fd=fd) for fd in fb - fa]
                acquired += [RefEvent(pid, comm, "acquire", "map", buf_b, vma=v) for v in vb - va]
        for group in (released, acquired):
            group.sort(key=lambda e: (e.buffer.id, e.via, e.fd or 0, e.vma or ()))
            refs.extend(group)

    acct_a, acct_b = account(a), account(b)
    deltas = []
    for pid in sorted(set(pa) | set(pb)):
        p = pb.get(pid) or pa.get(pid)
        before = _usage(acct_a, pid) if pid in pa else dict.fromkeys(_KEYS, 0)
        after = _usage(acct_b, pid) if pid in pb else dict.fromkeys(_KEYS, 0)
        mem = (acct_a.process(pid).total.mem if pid in pa else 0,
               acct_b.process(pid).total.mem if pid in pb else 0)
        if before == after and mem[0] == mem[1]:
            continue
        status = "new" if pid not in pa else ("gone" if pid not in pb else "")
        deltas.append(UsageDelta(pid, p.name, p.comm, before, after, status, mem))
    deltas.sort(key=lambda d: (-abs(d.delta("pss")), -abs(d.delta("rss")), -abs(d.delta("buffers")),
                               -abs(d.mem[1] - d.mem[0]), d.pid))

    totals = {
        "held_bytes": _pair(acct_a.held_bytes, acct_b.held_bytes),
        "pss": _pair(acct_a.total.pss, acct_b.total.pss),
        "held_allocated": _pair(acct_a.held_allocated, acct_b.held_allocated),
        "buffers": _pair(len(a.buffers), len(b.buffers)),
        "kernel_only_bytes": _pair(acct_a.kernel_only_bytes, acct_b.kernel_only_bytes),
        "dmabuf_exported_bytes": _pair(a.kernel.dmabuf_exported_bytes, b.kernel.dmabuf_exported_bytes),
    }
    return Diff(a, b, tuple(events), tuple(refs), tuple(deltas), totals)


def _usage(acct, pid) -> Dict[str, int]:
    u = acct.process(pid).total
    return {"rss": u.rss, "pss": u.pss, "uss": u.uss, "buffers": u.buffers}


def _pair(x: Optional[int], y: Optional[int]) -> Dict[str, Optional[int]]:
    return {"a": x, "b": y, "delta": None if x is None or y is None else y - x}
