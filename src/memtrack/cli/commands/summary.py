"""memtrack summary --by category|exporter|kind|name|process: totals per group."""
from __future__ import annotations

from ...summarize import BY, MEASURES, PROCESS_GROUPS, grand_total, summarize, to_json
from ...views.table import Column, human, render, to_csv
from ..common import emit, prepare, table_width

NAME = "summary"
HELP = "totals per category, exporter, kind, name or process, reconciling to the grand total"
ORDER = 3


def add_arguments(p):
    p.add_argument("--by", choices=BY, default="category",
                   help="what to group buffers by (default category; process, and the process "
                        "groups cgroup, unit, container, pod: pss shares)")
    p.add_argument("--measure", choices=MEASURES, default="size",
                   help="what to add up: buffer sizes (default), or allocated bytes, the memory "
                        "really there (by process or group: mem shares)")


def run(args) -> int:
    _, snap = prepare(args)
    measure = getattr(args, "measure", "size")
    rows = summarize(snap, args.by, measure=measure)
    total = grand_total(snap, measure)
    if args.json:
        emit(to_json(snap, args.by, rows, measure) + "\n", args)
        return 0
    if args.csv:
        emit(to_csv([args.by, "buffers", "bytes"], [list(r) for r in rows] + [list(total)]), args)
        return 0
    raw = args.bytes
    alloc = measure == "allocated"
    shared = args.by in ("process",) + PROCESS_GROUPS
    title = args.by.capitalize() + ((" (mem)" if alloc else " (pss)") if shared else "")
    cols = [Column(title, "<"), Column("Buffers"), Column("Allocated" if alloc else "Size")]
    body = [[r.group, str(r.buffers), human(r.bytes, raw)] for r in rows]
    emit(render(cols, body, [["TOTAL", str(total.buffers), human(total.bytes, raw)]], width=table_width(args)), args)
    return 0
