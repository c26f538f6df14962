"""memtrack report history.db: peaks, growth and suspected leaks over a recorded history."""
from __future__ import annotations

from ...errors import MemtrackError
from ...views.table import Column, human, printable, render
from ..common import Progress, count_arg, emit, load_history, name_cap, refuse, table_width

NAME = "report"
HELP = "per process and per category over a recorded history: peak, growth, suspected leaks"
ORDER = 31


def add_arguments(p):
    p.add_argument("history", metavar="history.db")
    p.add_argument("--by", choices=("cgroup", "unit", "container", "pod"), default=None,
                   help="per group of processes as well (one holder each, as summary --by and "
                        "ps --group account them): peak, growth, suspected leaks")
    p.add_argument("-t", "--top", type=count_arg, default=20, metavar="N", help="processes listed (default 20; 0: all)")


def run(args) -> int:
    from ...history import analyze, dumps
    refuse(args, "report", "csv", why="use --json")
    prog = Progress(args)
    try:
        h = load_history(args, "report", prog)
        if args.by and h.cgroups is None:
            raise MemtrackError(f"{args.history}: recorded without cgroups (by an older memtrack); "
                                f"--by {args.by} needs them")
        prog(f"analyzing {len(h)} snapshots")
        doc = analyze(h, pids=args.pid, by=args.by)
    finally:
        prog.done()
    if args.json:
        emit(dumps(doc) + "\n", args)
        return 0
    emit(render_text(doc, args.bytes, args.top, table_width(args), name_cap(args, 60)), args)
    return 0


def _signed(n, raw):
    return "0" if n == 0 else ("+" if n > 0 else "-") + human(abs(n), raw)


def _rate(x, raw):
    return ("+" if x >= 0 else "-") + human(int(round(abs(x))), raw) + "/s"


def render_text(doc: dict, raw: bool = False, top: int = 20, width=None, cap=60) -> str:
    out = [printable(f"{doc['history']}: {doc['snapshots']} snapshots from {doc['start']} to {doc['end']} "
           f"({doc['seconds']:.0f} s, {doc['runs']} recording run{'s' if doc['runs'] != 1 else ''})"), ""]
    procs = doc["processes"][:top] if top else doc["processes"]
    cols = [Column("PID"), Column("Peak Pss"), Column("Pss start"), Column("Pss end"), Column("Mem end"),
            Column("Growth"), Column("Slope"), Column("Bufs"), Column("First seen", "<"),
            Column("Last seen", "<"), Column("Name", "<")]
    rows = [[str(p["pid"]), human(p["pss"]["peak"], raw), human(p["pss"]["start"], raw),
             human(p["pss"]["end"], raw), "?" if p.get("mem") is None else human(p["mem"]["end"], raw),
             _signed(p["pss"]["growth"], raw), _rate(p["pss"]["slope_per_s"], raw),
             f"{p['buffers']['start']}->{p['buffers']['end']}", p["first_seen"][11:], p["last_seen"][11:],
             p["name"]] for p in procs]
    out.append(f"processes (largest peak pss first, {len(procs)} of {len(doc['processes'])}):")
    out.append(render(cols, rows, max_last=cap, width=width).rstrip("\n"))
    if doc["categories"]:
        out += ["", "categories (held bytes, each buffer once):"]
        cols = [Column("Category", "<"), Column("Peak"), Column("Start"), Column("End"), Column("Growth"),
                Column("Slope"), Column("Bufs")]
        rows = [[c["category"], human(c["bytes"]["peak"], raw), human(c["bytes"]["start"], raw),
                 human(c["bytes"]["end"], raw), _signed(c["bytes"]["growth"], raw),
                 _rate(c["bytes"]["slope_per_s"], raw), f"{c['buffers']['start']}->{c['buffers']['end']}"]
                for c in doc["categories"]]
        out.append(render(cols, rows, width=width).rstrip("\n"))
    if "groups" in doc:
        by, groups = doc["groups"]["by"], doc["groups"]["groups"]
        shown = groups[:top] if top else groups
        out += ["", f"groups by {by} (one holder each; largest peak pss first, {len(shown)} of {len(groups)}):"]
        cols = [Column("Peak Pss"), Column("Pss start"), Column("Pss end"), Column("Mem end"),
                Column("Growth"), Column("Slope"), Column("Bufs"), Column("Procs"), Column("First seen", "<"),
                Column("Last seen", "<"), Column(by.capitalize(), "<")]
        rows = [[human(g["pss"]["peak"], raw), human(g["pss"]["start"], raw), human(g["pss"]["end"], raw),
                 "?" if g["mem"] is None else human(g["mem"]["end"], raw), _signed(g["pss"]["growth"], raw),
                 _rate(g["pss"]["slope_per_s"], raw), f"{g['buffers']['start']}->{g['buffers']['end']}",
                 str(len(g["pids"])), g["first_seen"][11:], g["last_seen"][11:], g["group"]] for g in shown]
        out.append(render(cols, rows, max_last=cap, width=width).rstrip("\n"))
    ko = doc["kernel_only"]
    out.append("")
    out.append("kernel-only: " + ("unknown (no kernel dma-buf table or processes unread)" if ko is None else
               f"{human(ko['start'], raw)} -> {human(ko['end'], raw)}, peak {human(ko['peak'], raw)}"))
    ha = doc.get("held_allocated")
    if ha is not None:
        out.append(f"allocated (held by processes): {human(ha['start'], raw)} -> {human(ha['end'], raw)}, "
                   f"peak {human(ha['peak'], raw)}")
    out.append("")
    if doc["suspects"]:
        out.append(f"suspected leaks ({len(doc['suspects'])}):")
        for f in doc["suspects"]:
            ev = f["evidence"]
            when = ""
            if "first_seen" in ev:
                when = f" [first seen {ev['first_seen']}, last seen {ev['last_seen']}]"
            elif "first_acquired" in ev:
                when = f" [acquired {ev['first_acquired']} .. {ev['last_acquired']}]"
            # the tables are escaped by render(); these lines quote names from other processes
            out.append(printable(f"  {f['kind']}: {f['subject']}: {f['message']}{when}"))
    else:
        out.append("suspected leaks: none")
    return "\n".join(out) + "\n"
