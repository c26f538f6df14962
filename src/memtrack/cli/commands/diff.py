"""memtrack diff A B: what changed between two snapshots of any source."""
from __future__ import annotations

import json
import sys
import time

from ...errors import MemtrackError
from ...views.table import Column, human, printable, render
from ..common import (check_exclusive, emit, refuse, report_skipped, seconds_arg, source_origin,
                      with_categories)

NAME = "diff"
HELP = "buffers created/freed/resized, references acquired/released, usage deltas between two snapshots"
DESCRIPTION = (HELP + ". A and B are each a capture archive, a /proc-like directory, a JSON "
               "snapshot, or `-`/`live` for this machine now (both live: two scans INTERVAL apart).")
ORDER = 20

LIVE = ("-", "live")


def add_arguments(p):
    p.add_argument("a", metavar="A", help="the earlier snapshot")
    p.add_argument("b", metavar="B", help="the later snapshot")
    p.add_argument("-i", "--interval", type=seconds_arg, default=1.0, metavar="SECONDS",
                   help="when A and B are both live: seconds between the two scans (default 1)")


def load_any(spec: str, args):
    """(snapshot of spec, categorized like every view's (a saved snapshot keeps its own), the
    selection it shows: (pids, kinds), None for all, once diff's own -p/--kind narrow it)."""
    from ...model import Snapshot
    from ...procfs import scan
    from ...sources import open_source
    saved = {}
    src = open_source(None if spec in LIVE else spec, saved)
    if isinstance(src, Snapshot):
        snap = with_categories(src, args, overwrite=False)
    else:
        try:
            snap = scan(src, smaps=args.smaps)
        finally:
            src.close()
        report_skipped(snap, quiet=args.quiet, origin=source_origin(src))
        snap = with_categories(snap, args)
    sel = []
    for key, given in (("pids", args.pid), ("kinds", args.kind)):
        v = saved.get(key)
        if given is not None:
            v = set(given) if v is None else v & given
        sel.append(v)
    return snap, tuple(sel)


def _selection(sel) -> str:
    pids, kinds = sel
    return ("every process" if pids is None else "pids " + (",".join(map(str, sorted(pids))) or "none")) + \
        ", " + ("every kind" if kinds is None else "kinds " + (",".join(sorted(kinds)) or "none"))


def check_comparable(a, b, sel_a, sel_b, args) -> None:
    """Refuse A and B that show different things (a snapshot saved with -p or --kind, a
    capture made with -p): whatever one left out would read as freed or gone. Warn, and go
    on, when they come from different hosts or B is older than A."""
    if sel_a != sel_b:
        raise MemtrackError(f"A and B were saved with different selections (A: {_selection(sel_a)}; "
                            f"B: {_selection(sel_b)}): what one left out would read as gone; "
                            "narrow both alike with -p/--kind")
    if a.scope != b.scope and args.pid is None:
        part = "A" if a.scope != "all" else "B"
        raise MemtrackError(f"{part} covers only some processes (captured with -p), the other every "
                            "process: the rest would read as gone; name the processes to compare with -p")
    ha, hb = a.host.hostname, b.host.hostname
    if ha and hb and ha != hb:
        warn(f"A and B come from different hosts ({ha}, {hb})")
    ta, tb = _when(a.taken_at), _when(b.taken_at)
    if ta is not None and tb is not None and tb < ta:
        warn(f"B ({b.taken_at}) was taken before A ({a.taken_at}): what B lacks reads as freed")


def _when(taken_at: str):
    import datetime
    try:
        return datetime.datetime.strptime(taken_at, "%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        return None


def warn(text: str) -> None:
    print(printable(f"memtrack: warning: {text}"), file=sys.stderr)


def run(args) -> int:
    from ...diff import diff
    check_exclusive(args)
    if args.root:
        raise MemtrackError("diff takes its two sources as arguments, not --root")
    refuse(args, "diff", "csv", why="use --json")
    a, sel_a = load_any(args.a, args)
    if args.a in LIVE and args.b in LIVE:
        time.sleep(args.interval)
    b, sel_b = load_any(args.b, args)
    check_comparable(a, b, sel_a, sel_b, args)
    if args.pid is not None or args.kind is not None:
        a = a.restrict(pids=args.pid, kinds=args.kind)
        b = b.restrict(pids=args.pid, kinds=args.kind)
    d = diff(a, b)
    if args.json:
        emit(json.dumps(d.to_dict(), indent=1) + "\n", args)
        return 0
    emit(render_text(d, args.bytes), args)
    return 0


def _buf_line(sign: str, e, raw: bool) -> str:
    b = e.buffer
    size = human(b.size, raw)
    if e.action == "resize":
        size = f"{human(e.old_size, raw)} -> {size}"
    extra = []
    if b.exporter:
        extra.append(f"exporter {b.exporter}")
    if b.name:
        extra.append(f"name {b.name!r}")
    if e.reused:
        extra.append("inode reused")
    return f"  {sign} {b.id:<24} {size:>12}  " + ", ".join(extra)


def render_text(d, raw: bool = False) -> str:
    out = [f"A: {d.a.source} {d.a.taken_at}", f"B: {d.b.source} {d.b.taken_at}"]
    created, freed, resized = d.of("create"), d.of("free"), d.of("resize")
    reused = sum(1 for e in created if e.reused)
    out.append(f"buffers: {len(created)} created, {len(freed)} freed"
               + (f" ({reused} by inode reuse)" if reused else "") + f", {len(resized)} resized")
    out += [_buf_line("-", e, raw) for e in freed]
    out += [_buf_line("+", e, raw) for e in created]
    out += [_buf_line("~", e, raw) for e in resized]
    if d.refs:
        out.append(f"references: {sum(e.action == 'acquire' for e in d.refs)} acquired, "
                   f"{sum(e.action == 'release' for e in d.refs)} released")
        by_pid = {}
        for e in d.refs:
            by_pid.setdefault((e.pid, e.comm), []).append(e.describe())
        for (pid, comm), evs in by_pid.items():
            out.append(f"  {pid} {comm}: " + ", ".join(evs))
    t = d.totals
    parts = []
    for key, label in (("held_bytes", "held"), ("pss", "pss"), ("kernel_only_bytes", "kernel-only")):
        v = t[key]
        if v["delta"] is None:
            parts.append(f"{label}: unknown")
        else:
            parts.append(f"{label}: {human(v['a'], raw)} -> {human(v['b'], raw)} ({_signed(v['delta'], raw)})")
    out.append("totals: " + "; ".join(parts))
    # names, exporters, sources and times come from other processes and files: escaped
    text = "\n".join(map(printable, out)) + "\n"
    if d.processes:
        cols = [Column("PID"), Column("dRss"), Column("dPss"), Column("dUss"), Column("dBufs"),
                Column("Pss A"), Column("Pss B"), Column(""), Column("Name", "<")]
        rows = [[str(p.pid), _signed(p.delta("rss"), raw), _signed(p.delta("pss"), raw),
                 _signed(p.delta("uss"), raw), "%+d" % p.delta("buffers"),
                 human(p.before["pss"], raw), human(p.after["pss"], raw), p.status, p.name]
                for p in d.processes]
        text += render(cols, rows, max_last=80)
    else:
        text += "no process changed\n"
    return text


def _signed(n: int, raw: bool = False) -> str:
    if n == 0:
        return "0"
    return ("+" if n > 0 else "-") + human(abs(n), raw)

