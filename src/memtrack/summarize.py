"""Totals per group of buffers (category, exporter, kind, name, process): pure functions.

Every buffer of known size lands in exactly one row, so the rows add up to the grand total
(the sum of every known size in the snapshot): buffers some process holds go to their group
(by process: each holder gets its pss share), unheld ones to "(kernel only)" or, when some
processes could not be read, "(unattributed)"; buffers of unknown size have a row of their
own that counts them and adds no bytes.

measure="allocated" sums allocated bytes (what the buffers really hold) instead of sizes,
by the same rules: by process each holder gets its mem share; buffers whose allocated bytes
are unknown go to a row of their own.
"""
from __future__ import annotations

import json
from typing import Dict, List, NamedTuple, Optional

from .account import Accounting, account, is_kernel_only, pss_shares
from .model import Snapshot

BY = ("category", "exporter", "kind", "name", "process", "cgroup", "unit", "container", "pod")
#: groupings of processes (groups.py): each group gets its pss share, as a process does
PROCESS_GROUPS = ("cgroup", "unit", "container", "pod")
KERNEL_ONLY = "(kernel only)"
UNATTRIBUTED = "(unattributed)"
UNKNOWN_SIZE = "(unknown size)"
UNKNOWN_ALLOCATED = "(unknown allocated)"
MEASURES = ("size", "allocated")
NONE = {"category": "(none)", "exporter": "(none)", "name": "(unnamed)"}


class Row(NamedTuple):
    group: str
    buffers: int
    bytes: Optional[int]            # None for the unknown-size row


def summarize(snap: Snapshot, by: str, acct: Optional[Accounting] = None,
              measure: str = "size") -> List[Row]:
    """Group rows sorted largest first, then the kernel-only, unattributed and unknown-size
    rows (only those that are not empty)."""
    if by not in BY:
        raise ValueError(f"cannot group by {by!r}")
    if measure not in MEASURES:
        raise ValueError(f"cannot sum {measure!r}")
    acct = acct or account(snap)
    alloc = measure == "allocated"
    gshares = None
    if by in PROCESS_GROUPS:
        from .groups import account_groups
        ga = account_groups(snap, by)
        gshares = ga.mem_shares if alloc else ga.shares
    sizes: Dict[str, int] = {}
    counts: Dict[str, int] = {}
    special = {KERNEL_ONLY: [0, 0], UNATTRIBUTED: [0, 0]}
    unknown = 0
    for b in snap.buffers:
        size = b.allocated if alloc else b.size
        if size is None:
            unknown += 1
            continue
        if not b.holders:
            verdict = is_kernel_only(snap, b)
            row = special[KERNEL_ONLY if verdict else UNATTRIBUTED]
            row[0] += 1
            row[1] += size
            continue
        if gshares is not None:
            for g, share in gshares.get(b.id, {}).items():
                sizes[g] = sizes.get(g, 0) + share
                counts[g] = counts.get(g, 0) + 1
            continue
        if by == "process":
            shares = pss_shares(size, b.holders) if alloc else acct.shares.get(b.id, {})
            for pid, share in shares.items():
                p = snap.process_map.get(pid)
                g = f"{pid} {p.comm}" if p and p.comm else str(pid)
                sizes[g] = sizes.get(g, 0) + share
                counts[g] = counts.get(g, 0) + 1
            continue
        g = getattr(b, by) or NONE.get(by, "?")
        sizes[g] = sizes.get(g, 0) + size
        counts[g] = counts.get(g, 0) + 1
    rows = [Row(g, counts[g], sizes[g]) for g in sorted(sizes, key=lambda g: (-sizes[g], g))]
    for g, (n, size) in special.items():
        if n:
            rows.append(Row(g, n, size))
    if unknown:
        rows.append(Row(UNKNOWN_ALLOCATED if alloc else UNKNOWN_SIZE, unknown, None))
    return rows


def grand_total(snap: Snapshot, measure: str = "size") -> Row:
    """Every buffer, every known size (or allocated bytes): what the rows of `summarize` add
    up to."""
    field = "allocated" if measure == "allocated" else "size"
    return Row("TOTAL", len(snap.buffers),
               sum(getattr(b, field) for b in snap.buffers if getattr(b, field) is not None))


def to_json(snap: Snapshot, by: str, rows: List[Row], measure: str = "size") -> str:
    t = grand_total(snap, measure)
    doc = {"by": by, "rows": [r._asdict() for r in rows], "total": {"buffers": t.buffers, "bytes": t.bytes}}
    if measure != "size":
        doc["measure"] = measure
    return json.dumps(doc, indent=1)
