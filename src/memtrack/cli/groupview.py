"""`memtrack ps --group cgroup|unit|container|pod`: one row per group of processes, what it
holds (groups.py: a group is one holder) beside what the memory controller charged its
cgroups for shared memory."""
from __future__ import annotations

import json

from ..groups import CHARGED, account_groups, charged
from ..model import KINDS
from ..views.table import Column, human, render, to_csv
from .common import emit, name_cap, table_width

_TITLE = {"cgroup": "Cgroup", "unit": "Unit", "container": "Container", "pod": "Pod"}
_SORT = ("pss", "mem", "rss", "uss", "mapped")


def rows_of(snap, view, args):
    """(group usages in display order, the charges of each by group, kinds shown)."""
    by = args.group
    base = snap.restrict(kinds=args.kind) if args.kind else snap
    ga = account_groups(base, by)
    groups = ga.sorted()
    if getattr(args, "pid", None) is not None:
        shown = {p.pid for p in view.processes}
        groups = [g for g in groups if shown & set(g.pids)]
    key = getattr(args, "sort", "pss")
    if key in _SORT:
        groups.sort(key=lambda g: (-getattr(g, key), g.group))
    elif key == "name":
        groups.sort(key=lambda g: g.group)
    if getattr(args, "reverse", False):
        groups.reverse()
    kinds = [k for k in KINDS if any(k in g.by_kind for g in groups)]
    charges = {g.group: charged(snap, g.cgroups) for g in groups}
    return groups, charges, kinds


def run(snap, view, args, summary_lines) -> int:
    """summary_lines: ps's line under the table (passed in: ps imports this module)."""
    from ..account import account
    groups, charges, kinds = rows_of(snap, view, args)
    by, raw = args.group, args.bytes
    have = [k for k in CHARGED if any(c and k in c for c in charges.values())]
    if args.json:
        doc = {"by": by, "groups": []}
        for g in groups:
            d = g.as_dict()
            d["charged"] = charges[g.group]
            doc["groups"].append(d)
        emit(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", args)
        return 0
    if args.csv:
        header = [by, "processes", "rss", "pss", "uss", "mapped"] + [f"{k}_pss" for k in kinds] + \
                 [f"charged_{k}" for k in have] + ["mem", "unknown_allocated_buffers"]
        rows = [[g.group, len(g.pids), g.rss, g.pss, g.uss, g.mapped] +
                [g.by_kind.get(k, 0) for k in kinds] +
                [(charges[g.group] or {}).get(k) for k in have] + [g.mem, g.unknown_alloc]
                for g in groups]
        emit(to_csv(header, rows), args)
        return 0
    titles = {"shmem": "ChgShmem", "file_mapped": "ChgMapped", "dmem": "ChgDmem"}
    cols = [Column("Procs"), Column("Rss"), Column("Pss"), Column("Mem"), Column("Uss"), Column("Mapped")] + \
        [Column(k) for k in kinds] + [Column(titles[k]) for k in have] + [Column(_TITLE[by], "<")]
    body = []
    for g in groups:
        c = charges[g.group] or {}
        body.append([str(len(g.pids)), _sized(g.rss, g.unknown, raw), _sized(g.pss, g.unknown, raw),
                     _sized(g.mem, g.unknown_alloc, raw), _sized(g.uss, g.unknown, raw),
                     human(g.mapped, raw)] +
                    [human(g.by_kind[k], raw) if k in g.by_kind else "-" for k in kinds] +
                    [human(c[k], raw) if k in c else "-" for k in have] + [g.group])
    foot = [str(sum(len(g.pids) for g in groups)), human(sum(g.rss for g in groups), raw),
            human(sum(g.pss for g in groups), raw), human(sum(g.mem for g in groups), raw),
            human(sum(g.uss for g in groups), raw),
            human(sum(g.mapped for g in groups), raw)] + \
        [human(sum(g.by_kind.get(k, 0) for g in groups), raw) for k in kinds] + \
        ["" for _ in have] + [f"TOTAL ({len(groups)} groups)"]
    out = render(cols, body, [foot], max_last=name_cap(args, 100), width=table_width(args))
    out += summary_lines(snap, account(snap), raw, args.kind)
    if have:
        out += ("Chg*: what the memory controller charged the group's cgroups (with their "
                "descendants), whoever holds it now\n")
    emit(out, args)
    return 0


def _sized(n, unknown, raw):
    if not unknown:
        return human(n, raw)
    return "?" if n == 0 else human(n, raw) + "+"
