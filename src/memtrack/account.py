"""Accounting: pure functions of a Snapshot (README.md, "Accounting rules").

For process P and buffer B of size S held by the set H(B):
  rss(P) = sum S over buffers P holds (each buffer once, however many fds/maps)
  pss(P) = sum S/|H(B)|, split to the byte: the first S mod |H| holders (by pid) get one
           byte more, so that sum pss over all processes == sum S over held buffers exactly
  uss(P) = sum S over buffers only P holds
  mapped(P) = bytes of P's mappings of those buffers; in_rss(P) = the part of them smaps
           says is already in P's RSS (only with --smaps)
  mem(P) = sum A/|H(B)| over the same buffers, A its allocated bytes (the memory really
           there, RAM + swap), split exactly as pss: sum mem == sum A over held buffers
  hidden(P) = with --smaps, per buffer max(0, A - in_rss): memory of the buffer that P's
           RSS does not show (untouched pages of a sparse buffer are no memory at all)
Buffers of unknown size add nothing and are counted in ``unknown``; of unknown allocated
bytes, nothing to mem (or hidden) and are counted in ``unknown_alloc``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Dict, Iterable, Iterator, Optional, Tuple

from .model import Snapshot


@dataclass
class Usage:
    rss: int = 0
    pss: int = 0
    uss: int = 0
    mapped: int = 0
    in_rss: int = 0
    buffers: int = 0
    unknown: int = 0           # buffers held whose size could not be known
    mem: int = 0               # share of the allocated bytes, split as pss is
    hidden: int = 0            # allocated bytes of held buffers not already inside RSS (--smaps)
    unknown_alloc: int = 0     # buffers held whose allocated bytes could not be known

    def add(self, other: "Usage") -> None:
        self.rss += other.rss
        self.pss += other.pss
        self.uss += other.uss
        self.mapped += other.mapped
        self.in_rss += other.in_rss
        self.buffers += other.buffers
        self.unknown += other.unknown
        self.mem += other.mem
        self.hidden += other.hidden
        self.unknown_alloc += other.unknown_alloc

    def get(self, key: str) -> int:
        return getattr(self, key)

    def as_dict(self, smaps: bool = False) -> dict:
        d = {"rss": self.rss, "pss": self.pss, "uss": self.uss, "mapped": self.mapped,
             "buffers": self.buffers, "unknown_size": self.unknown,
             "mem": self.mem, "unknown_allocated": self.unknown_alloc}
        if smaps:
            d["in_rss"] = self.in_rss
        return d


@dataclass
class ProcessUsage:
    total: Usage = field(default_factory=Usage)
    by_kind: Dict[str, Usage] = field(default_factory=dict)


@dataclass
class Accounting:
    processes: Dict[int, ProcessUsage]
    total: Usage
    by_kind: Dict[str, Usage]
    shares: "Shares"                        # buffer id -> pid -> pss bytes (made when asked)
    held_bytes: int                         # sum of known sizes of buffers someone holds
    held_allocated: int                     # sum of known allocated bytes of those buffers
    kernel_only_bytes: Optional[int]        # unheld buffers the kernel reports (None: can't tell)
    kernel_only_buffers: Optional[int]
    unattributed_bytes: int                 # unheld, but maybe held by processes we could not read

    def process(self, pid: int) -> ProcessUsage:
        return self.processes.get(pid) or ProcessUsage()


class Shares(Mapping):
    """buffer id -> {pid: pss bytes} for every held buffer of known size, made when asked:
    a dict per buffer, for all of them, was a quarter of a big snapshot's memory."""

    def __init__(self, snap: Snapshot):
        self._snap = snap

    def __getitem__(self, bid: str) -> Dict[int, int]:
        b = self._snap.buffer_map[bid]
        if not b.holders or b.size is None:
            raise KeyError(bid)
        return pss_shares(b.size, b.holders)

    def __iter__(self) -> Iterator[str]:
        return (b.id for b in self._snap.buffers if b.holders and b.size is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def pss_shares(size: int, holders: Iterable[int]) -> Dict[int, int]:
    hs = sorted(holders)
    if not hs:
        return {}
    base, rem = divmod(size, len(hs))
    return {pid: base + (1 if i < rem else 0) for i, pid in enumerate(hs)}


def is_kernel_only(snap: Snapshot, b) -> Optional[bool]:
    """True: no process holds it and none can (kernel/driver only). None: can't tell,
    because some processes could not be read and might hold it."""
    if b.holders:
        return False
    if b.kind == "sysv":
        return True if (b.kernel_count or 0) == 0 else None
    return True if snap.complete else None


def account(snap: Snapshot) -> Accounting:
    procs: Dict[int, ProcessUsage] = {}
    total = Usage()
    by_kind: Dict[str, Usage] = {}
    # buffer id -> (kind, size, pss shares or None, held alone, allocated, mem shares or
    # None); shares None and size known: held alone
    facts: Dict[str, tuple] = {}
    held = held_alloc = 0
    unheld = []
    for b in snap.buffers:
        size, holders, alloc = b.size, b.holders, b.allocated
        sh = msh = None
        if not holders:
            unheld.append(b)
        else:
            if size is not None:
                held += size
                if len(holders) > 1:
                    sh = pss_shares(size, holders)
            if alloc is not None:
                held_alloc += alloc
                if len(holders) > 1:
                    msh = pss_shares(alloc, holders)
        facts[b.id] = (b.kind, size, sh, len(holders) == 1, alloc, msh)
    ko_bytes, ko_count, unattributed = _unheld(snap, unheld)
    for p in snap.processes:
        pid = p.pid
        # kind -> [rss, pss, uss, mapped, in_rss, buffers, unknown, mem, hidden, unknown_alloc]
        acc: Dict[str, list] = {}
        for r in p.refs:
            kind, size, sh, alone, alloc, msh = facts[r.buffer]
            a = acc.get(kind)
            if a is None:
                a = acc[kind] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
            vmas = r.vmas
            if vmas:
                a[3] += sum(e - s for s, e, _ in vmas)
            a[5] += 1
            if alloc is None:
                a[9] += 1
            else:
                a[7] += alloc if alone else msh.get(pid, 0)
                if r.in_rss is not None and alloc > r.in_rss:
                    a[8] += alloc - r.in_rss
                elif r.in_rss is None:
                    a[8] += alloc
            if size is None:
                a[6] += 1                 # and its in_rss stays out too, or hidden would go negative
                continue
            a[0] += size
            if r.in_rss:
                a[4] += r.in_rss
            if alone:
                a[1] += size
                a[2] += size
            elif sh:
                a[1] += sh.get(pid, 0)
        pu = ProcessUsage()
        for kind, v in acc.items():
            u = Usage(*v)
            pu.by_kind[kind] = u
            pu.total.add(u)
            bk = by_kind.get(kind)
            if bk is None:
                bk = by_kind[kind] = Usage()
            bk.add(u)
        procs[pid] = pu
        total.add(pu.total)
    return Accounting(
        processes=procs, total=total, by_kind=by_kind, shares=Shares(snap), held_bytes=held,
        held_allocated=held_alloc,
        kernel_only_bytes=ko_bytes, kernel_only_buffers=ko_count, unattributed_bytes=unattributed)


def footing(snap: Snapshot, kinds=None) -> Tuple[int, Optional[int], Optional[int], int]:
    """(held bytes, kernel-only bytes, kernel-only buffers, unattributed bytes) over the
    buffers of these kinds (all kinds by default): Accounting's figures of the same names,
    for the line under a table that shows only some kinds."""
    held = 0
    unheld = []
    for b in snap.buffers:
        if kinds is not None and b.kind not in kinds:
            continue
        if not b.holders:
            unheld.append(b)
        elif b.size is not None:
            held += b.size
    return (held,) + _unheld(snap, unheld)


def _unheld(snap: Snapshot, buffers) -> Tuple[Optional[int], Optional[int], int]:
    """(kernel-only bytes, kernel-only buffers, unattributed bytes) of buffers no process
    holds. Without the kernel's dma-buf table, or with processes unread, the kernel-only
    figures would be a guess: say so (None) rather than print a number."""
    ko_bytes = ko_count = unattributed = 0
    for b in buffers:
        verdict = is_kernel_only(snap, b)
        if verdict:
            ko_count += 1
            ko_bytes += b.size or 0
        elif verdict is None:
            unattributed += b.size or 0
    if not (snap.complete and snap.kernel.dmabuf_source is not None):
        return None, None, unattributed
    return ko_bytes, ko_count, unattributed
