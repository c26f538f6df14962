"""memtrack buffers: one line per buffer with its holders, largest first."""
from __future__ import annotations

from ...views.table import Column, human, render, to_csv
from ..common import emit, emit_json, prepare, table_width
from .show import alloc_text, holder_text

NAME = "buffers"
HELP = "one line per shared buffer with its holders, largest first"
ORDER = 2


def add_arguments(p):
    p.add_argument("--all", action="store_true", help="list every holder, not the first eight")


def run(args) -> int:
    snap, view = prepare(args)
    if args.json:
        return emit_json(view, args)
    bufs = sorted(view.buffers, key=lambda b: (-(b.size if b.size is not None else -1), b.id))
    if args.csv:
        rows = [[b.id, b.kind, b.dev, b.inode, b.size, b.allocated, b.swapped, b.exporter, b.name,
                 len(b.holders), b.fd_refs, b.map_refs, b.kernel_count, " ".join(map(str, b.holders))]
                for b in bufs]
        emit(to_csv(["buffer", "kind", "dev", "inode", "size", "allocated", "swapped", "exporter", "name",
                     "nr_procs", "fd_refs", "map_refs", "kernel_count", "holders"], rows), args)
        return 0
    raw = args.bytes
    # Alloc: the bytes the buffer really holds (RAM + swap), "?" where unknown
    cols = [Column("Kind", "<"), Column("Inode"), Column("Size"), Column("Alloc"), Column("nr_procs"),
            Column("Fds"), Column("Maps"), Column("Exporter", "<"), Column("Name", "<"), Column("Holders", "<")]
    rows = []
    total = unknown = alloc = unknown_alloc = 0
    for b in bufs:
        if b.size is None:
            unknown += 1
        else:
            total += b.size
        if b.allocated is None:
            unknown_alloc += 1
        else:
            alloc += b.allocated
        rows.append([b.kind, "-" if b.inode is None else str(b.inode), human(b.size, raw),
                     alloc_text(b, raw),
                     str(len(b.holders)), str(b.fd_refs), str(b.map_refs), b.exporter or "-",
                     b.name or "-", holder_text(snap, b, limit=10**9 if args.all else 8)])
    foot = ["", "", human(total, raw), human(alloc, raw) + ("+" if unknown_alloc and alloc else "")
            if alloc or not unknown_alloc else "?", "", "", "", "", f"TOTAL ({len(bufs)} buffers"
            + (f", {unknown} of unknown size)" if unknown else ")"), ""]
    emit(render(cols, rows, [foot], width=table_width(args)), args)
    return 0
