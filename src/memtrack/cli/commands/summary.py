"""memtrack summary --by category|exporter|kind|name|process: totals per group."""
from __future__ import annotations

from ...summarize import BY, PROCESS_GROUPS, grand_total, summarize, to_json
from ...views.table import Column, human, render, to_csv
from ..common import emit, prepare

NAME = "summary"
HELP = "totals per category, exporter, kind, name or process, reconciling to the grand total"
ORDER = 3


def add_arguments(p):
    p.add_argument("--by", choices=BY, default="category",
                   help="what to group buffers by (default category; process, and the process "
                        "groups cgroup, unit, container, pod: pss shares)")


def run(args) -> int:
    _, snap = prepare(args)
    rows = summarize(snap, args.by)
    total = grand_total(snap)
    if args.json:
        emit(to_json(snap, args.by, rows) + "\n", args)
        return 0
    if args.csv:
        emit(to_csv([args.by, "buffers", "bytes"], [list(r) for r in rows] + [list(total)]), args)
        return 0
    raw = args.bytes
    title = args.by.capitalize() + (" (pss)" if args.by in ("process",) + PROCESS_GROUPS else "")
    cols = [Column(title, "<"), Column("Buffers"), Column("Size")]
    body = [[r.group, str(r.buffers), human(r.bytes, raw)] for r in rows]
    emit(render(cols, body, [["TOTAL", str(total.buffers), human(total.bytes, raw)]]), args)
    return 0
