"""`memtrack show /CGROUP/PATH`: the buffers one cgroup's processes hold (the group as one
holder), what the memory controller charged it, and, on the live machine as root, which
cgroup the seen pages of each buffer are charged to: the buffers it holds that others
were charged for, and those held by others only that it was charged for."""
from __future__ import annotations

import json
import os

from ..cgroups import cgroup_dir, parse_memory_stat, safe_path
from ..errors import MemtrackError
from ..groups import account_groups, charged
from ..views.table import Column, human, printable, render
from .common import emit, get_snapshot


def _hierarchy(snap) -> str:
    for c in snap.cgroups:
        return c.hierarchy
    return "v1" if os.path.exists("/sys/fs/cgroup/memory/memory.stat") else "v2"


def run(args, path: str) -> int:
    if not safe_path(path):
        raise MemtrackError(f"cgroup {path!r}: a cgroup path starts with / and has no ..")
    path = path.rstrip("/") or "/"
    snap = get_snapshot(args)
    hier = _hierarchy(snap)
    live = snap.source == "live"
    ga = account_groups(snap, "cgroup")
    g = ga.groups.get(path)
    charge = charged(snap, [path])
    if charge is None and live:             # a cgroup none of whose processes holds a buffer
        try:
            with open("/" + cgroup_dir(path, hier) + "/memory.stat") as f:
                st = parse_memory_stat(f.read(), hier)
            # as groups.charged gives them: with descendants (v1: its total_* figures)
            pre = "total_" if hier == "v1" else ""
            charge = {k: st[pre + k] for k in ("shmem", "file_mapped") if pre + k in st}
        except OSError:
            charge = None
    if g is None and charge is None:
        raise MemtrackError(f"cgroup {path}: no process of the snapshot is in it"
                            + ("" if live else ", and the capture has no figures of it"))
    pages, ino = None, None
    if live:
        from ..pagecharge import page_charges
        try:
            ino = os.stat("/" + cgroup_dir(path, hier)).st_ino
        except OSError:
            ino = None
        if ino is not None:
            pages = page_charges(snap)
    members = set(g.pids) if g else set()
    held, others = [], []
    for b in snap.buffers:
        here = [pid for pid in b.holders if pid in members]
        pc = (pages or {}).get(b.id, {})
        mine = pc.get(ino, 0) if pages is not None else None
        elsewhere = sum(n for i, n in pc.items() if i != ino) if pages is not None else None
        entry = {"id": b.id, "kind": b.kind, "size": b.size, "name": b.name,
                 "holders_here": here, "holders_elsewhere": [p for p in b.holders if p not in members],
                 "charged_here": mine, "charged_elsewhere": elsewhere}
        if here:
            entry["pss"] = ga.shares.get(b.id, {}).get(path)
            held.append(entry)
        elif mine:
            others.append(entry)
    held.sort(key=lambda e: (-(e["size"] or -1), e["id"]))
    others.sort(key=lambda e: (-e["charged_here"], e["id"]))
    if args.json:
        doc = {"cgroup": path, "hierarchy": hier, "held": g.as_dict() if g else None,
               "charged": charge, "pages_told": pages is not None,
               "buffers": held, "others_charged_here": others}
        emit(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", args)
        return 0
    raw = args.bytes
    names = ", ".join(f"{p.pid}({p.comm})" for p in snap.processes if p.pid in members) or "none"
    out = printable(f"cgroup {path} ({hier})  processes: {names}") + "\n"
    if g:
        out += (f"holds: rss {human(g.rss, raw)}  pss {human(g.pss, raw)}  uss {human(g.uss, raw)}  "
                f"buffers {g.buffers}\n")
    if charge:
        out += "charged (memory.stat, with descendants): " + "  ".join(
            f"{k} {human(v, raw)}" for k, v in charge.items() if v is not None) + "\n"
    out += "\n"
    told = pages is not None
    cols = [Column("Kind", "<"), Column("Size"), Column("Pss")]
    if told:
        cols += [Column("ChgHere"), Column("ChgElsewhere")]
    cols += [Column("Others"), Column("Name", "<")]
    rows = []
    for e in held:
        row = [e["kind"], human(e["size"], raw), human(e["pss"], raw) if e.get("pss") is not None else "?"]
        if told:
            row += [human(e["charged_here"], raw), human(e["charged_elsewhere"], raw)]
        row += [str(len(e["holders_elsewhere"])), e["name"] or e["id"]]
        rows.append(row)
    out += render(cols, rows) if rows else "holds no shared buffers\n"
    if told:
        if others:
            out += "\nheld by other cgroups only, with pages charged to this one:\n"
            out += render([Column("Kind", "<"), Column("Size"), Column("ChgHere"), Column("Holders", "<"),
                           Column("Name", "<")],
                          [[e["kind"], human(e["size"], raw), human(e["charged_here"], raw),
                            ",".join(map(str, e["holders_elsewhere"][:8])), e["name"] or e["id"]]
                           for e in others])
        out += ("Chg*: pages some holder has mapped, by the cgroup /proc/kpagecgroup says they "
                "are charged to; pages no holder has touched are not seen\n")
    else:
        out += ("(which cgroup each page is charged to is told only on the live machine, as root, "
                "where /proc/kpagecgroup is)\n")
    emit(out, args)
    return 0
