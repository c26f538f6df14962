"""memtrack matrix: buffers x processes, each cell `fds(maps)` (like `dmabuf_dump -a`)."""
from __future__ import annotations

from ...account import account
from ...views.table import Column, human, render, to_csv
from ..common import emit, emit_json, prepare, table_width
from .ps import sized

NAME = "matrix"
HELP = "buffers x processes grid, each cell fds(maps)"
ORDER = 5


def add_arguments(p):
    pass


def cells(view):
    """(buffers largest first, processes by pid, {(buffer id, pid): (fds, maps)})."""
    refs = {}
    for p in view.processes:
        for r in p.refs:
            refs[(r.buffer, p.pid)] = (len(r.fds), len(r.vmas))
    procs = sorted((p for p in view.processes if p.refs), key=lambda p: p.pid)
    bufs = sorted(view.buffers, key=lambda b: (-(b.size if b.size is not None else -1), b.id))
    return bufs, procs, refs


def run(args) -> int:
    snap, view = prepare(args)
    if args.json:
        return emit_json(view, args)
    bufs, procs, refs = cells(view)
    heads = [f"{p.comm or '?'}:{p.pid}" for p in procs]
    if args.csv:
        rows = []
        for b in bufs:
            rows.append([b.id, b.kind, b.inode, b.size, len(b.holders)] +
                        ["%d(%d)" % refs[(b.id, p.pid)] if (b.id, p.pid) in refs else "" for p in procs] +
                        [b.name])
        emit(to_csv(["buffer", "kind", "inode", "size", "nr_procs"] + heads + ["name"], rows), args)
        return 0
    raw = args.bytes
    acct = account(view)
    cols = [Column("Kind", "<"), Column("Inode"), Column("Size"), Column("nr_procs")] + \
        [Column(h) for h in heads] + [Column("Name", "<")]
    rows = []
    for b in bufs:
        rows.append([b.kind, "-" if b.inode is None else str(b.inode), human(b.size, raw),
                     str(len(b.holders))] +
                    ["%d(%d)" % refs[(b.id, p.pid)] if (b.id, p.pid) in refs else "--" for p in procs] +
                    [b.name or "-"])
    known = [b.size for b in bufs if b.size is not None]
    foot = ["TOTAL", "", sized(sum(known), len(known) < len(bufs), raw), ""]
    for p in procs:
        u = acct.process(p.pid).total
        foot.append(sized(u.rss, u.unknown, raw))
    foot.append("(per process: rss, each buffer once)")
    emit(render(cols, rows, [foot], width=table_width(args)), args)
    return 0
