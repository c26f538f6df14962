"""memtrack dmabuf-dump [PID|-p PIDS] [-a|-b] [-o raw|csv]: Android's dmabuf_dump, line for line,
from memtrack's accounting (system/memory/libmeminfo/libdmabufinfo/tools/dmabuf_dump.cpp).

Differences, all on purpose: Pss is memtrack's exact split among every holder (also with a
PID, where Android sees only that process); kernel_rss is the dma-bufs no process holds
(Android: the kernel total minus the buffers of the processes shown); processes come in
pid order. A buffer whose size nobody could tell (mapped only, no kernel table, no mapstat)
shows `?` where Android would print a number, and a total it leaves out ends in `+` (as in
`ps`): memtrack never prints an unknown as 0 kB.
"""
from __future__ import annotations

import sys
from typing import Dict, List

from ...account import account
from ...errors import MemtrackError
from ...views.table import printable
from ..common import check_exclusive, emit, emit_json, get_snapshot
from .matrix import cells

NAME = "dmabuf-dump"
HELP = "dma-buf report in the layout of Android's dmabuf_dump (-a grid, -b per-buffer stats, -a -b both)"
ORDER = 6
OVERRIDES_COMMON = True          # -b is dmabuf_dump's per-buffer switch here; --bytes stays
SEP = "-----------------------"


def add_arguments(p):
    p.add_argument("dump_pid", nargs="?", type=int, metavar="PID", help="only this process")
    p.add_argument("-a", "--all", dest="table", action="store_true",
                   help="all dma-bufs in one buffer x process table")
    p.add_argument("-b", "--per-buffer", action="store_true",
                   help="per-buffer, per-exporter and total statistics from the kernel's table")
    p.add_argument("-o", dest="format", choices=("raw", "csv"), default="raw", help="output format")


def _comm(snap, pid) -> str:
    p = snap.process_map.get(pid)
    return printable(p.comm) if p and p.comm else "N/A"


def _exporter(b) -> str:
    return printable(b.exporter or "<unknown>")


def _kb(n) -> int:
    return (n or 0) // 1024


def _sized(n, unknown: bool, csv: bool = False) -> str:
    """A kB (or byte) figure that leaves out buffers of unknown size: '?' if that is all
    there is, else 'N+' (as ps does); in CSV an empty field for '?' and the lower bound."""
    if not unknown:
        return str(n)
    if csv:
        return str(n) if n else ""
    return "?" if n == 0 else f"{n}+"


def unknown_line(n: int, csv: bool) -> str:
    """The line that says why some figures are '?' or end in '+'."""
    if not n:
        return ""
    text = (f"{n} dma-buf{'s' if n != 1 else ''} of unknown size (mapped only, with no kernel "
            "dma-buf table and no mapstat): shown as ?, not counted in totals marked +")
    if csv:
        print(f"memtrack: note: {text}", file=sys.stderr)    # keeps the CSV a table
        return ""
    return f"+ {text}\n"


def per_process(snap, view, csv: bool) -> str:
    acct = account(snap)
    bufs = {b.id: b for b in view.buffers}
    out: List[str] = []
    if not bufs:
        return "dmabuf info not found ¯\\_(ツ)_/¯\n"
    total_rss = total_pss = 0
    unknown = set()                   # ids of buffers of unknown size shown
    any_unknown = False               # some total shown leaves one out
    for p in sorted(view.processes, key=lambda p: p.pid):
        mine = sorted((bufs[r.buffer] for r in p.refs if r.buffer in bufs), key=lambda b: b.inode or 0)
        if not mine:
            continue
        usage = acct.process(p.pid).by_kind["dmabuf"]
        rss, pss = usage.rss, usage.pss
        some = bool(usage.unknown)
        any_unknown |= some
        if csv:
            out.append(f"\t{_comm(snap, p.pid)}:{p.pid}\n")
            out.append('"Name","Rss(kB)","Pss(kB)","nr_procs","Inode","Exporter"\n')
        else:
            out.append("%16s:%-5d\n" % (_comm(snap, p.pid), p.pid))
            out.append("%22s %16s %16s %16s %16s %22s\n" % ("Name", "Rss", "Pss", "nr_procs", "Inode", "Exporter"))
        for b in mine:
            share = acct.shares.get(b.id, {}).get(p.pid, 0)
            name, exp = printable(b.name or "<unknown>"), _exporter(b)
            if b.size is None:
                unknown.add(b.id)
            size_kb = _sized(_kb(b.size), b.size is None, csv)
            share_kb = _sized(_kb(share), b.size is None, csv)
            if csv:
                out.append('"%s",%s,%s,%d,%d,%s\n' % (name, size_kb, share_kb, len(b.holders),
                                                     b.inode or 0, exp))
            else:
                out.append("%22s %13s kB %13s kB %16d %16d  %22s\n" % (
                    name, size_kb, share_kb, len(b.holders), b.inode or 0, exp))
        if csv:
            out.append('\nPROCESS TOTAL\n"Rss total(kB)","Pss total(kB)"\n%s,%s\n' % (
                _sized(_kb(rss), some, csv), _sized(_kb(pss), some, csv)))
        else:
            out.append("%22s %13s kB %13s kB %16s\n" % ("PROCESS TOTAL", _sized(_kb(rss), some),
                                                        _sized(_kb(pss), some), ""))
        out.append("----------------------\n")
        total_rss += rss
        total_pss += pss
    a = account(snap.restrict(kinds={"dmabuf"}))
    kernel_rss = a.kernel_only_bytes
    exported = snap.kernel.dmabuf_exported_bytes
    if exported is not None and exported < a.held_bytes:
        # the kernel's table lists less than processes hold: a partial or empty sysfs stats
        # directory (Android's words, on stdout as there; in CSV on stderr)
        if csv:
            print("memtrack: warning: Total dmabufs < userspace dmabufs (the kernel's dma-buf "
                  f"table lists {exported} bytes, processes hold {a.held_bytes})", file=sys.stderr)
        else:
            out.append("Warning: Total dmabufs < userspace dmabufs\n")
    if kernel_rss is None:
        if exported is not None and exported >= a.held_bytes:
            kernel_rss = exported - a.held_bytes
        else:
            kernel_rss = 0
            print("memtrack: note: dma-bufs held by no process unknown (no kernel dma-buf table or "
                  "processes unread): kernel_rss shows 0", file=sys.stderr)
    total = exported if exported is not None else a.held_bytes + kernel_rss
    # without the kernel's table the total is what processes hold: a lower bound if some
    # buffer's size is unknown
    total_unknown = exported is None and any(b.size is None for b in snap.buffers if b.kind == "dmabuf")
    if csv:
        out.append('\tTOTALS\n"dmabuf total (kB)","kernel_rss (kB)","userspace_rss (kB)","userspace_pss (kB)"\n')
        out.append("%s,%d,%s,%s\n" % (_sized(_kb(total), total_unknown, csv), _kb(kernel_rss),
                                       _sized(_kb(total_rss), any_unknown, csv),
                                       _sized(_kb(total_pss), any_unknown, csv)))
    else:
        out.append("dmabuf total: %s kB kernel_rss: %d kB userspace_rss: %s kB userspace_pss: %s kB\n" % (
            _sized(_kb(total), total_unknown), _kb(kernel_rss), _sized(_kb(total_rss), any_unknown),
            _sized(_kb(total_pss), any_unknown)))
    out.append(unknown_line(len(unknown), csv))
    return "".join(out)


def table(snap, view, csv: bool) -> str:
    bufs, procs, refs = cells(view)
    bufs = sorted(bufs, key=lambda b: b.inode or 0)
    if not bufs:
        return "dmabuf info not found ¯\\_(ツ)_/¯\n"
    out = ["\n----------------------- DMA-BUF Table buffer x process --------------------------\n"]
    if csv:
        out.append('"Dmabuf Inode","Size(kB)","Fd Ref Counts","Map Ref Counts"')
        out.extend(',"%s:%d"' % (_comm(snap, p.pid), p.pid) for p in procs)
    else:
        out.append("    Dmabuf Inode |            Size |   Fd Ref Counts |  Map Ref Counts |")
        out.extend("%16s:%-5d |" % (_comm(snap, p.pid), p.pid) for p in procs)
    out.append("\n")
    per_pid: Dict[int, int] = {}
    unknown_pids = set()              # whose total leaves out a buffer of unknown size
    total = 0
    unknown = 0
    for b in bufs:
        fd_pids = sum(1 for p in procs if refs.get((b.id, p.pid), (0, 0))[0])
        map_pids = sum(1 for p in procs if refs.get((b.id, p.pid), (0, 0))[1])
        size_kb = _sized(_kb(b.size), b.size is None, csv)
        unknown += b.size is None
        if csv:
            out.append("%d,%s,%d,%d" % (b.inode or 0, size_kb, fd_pids, map_pids))
        else:
            out.append("%16d |%13s kB |%16d |%16d |" % (b.inode or 0, size_kb, fd_pids, map_pids))
        for p in procs:
            fds, maps = refs.get((b.id, p.pid), (0, 0))
            if fds or maps:
                per_pid[p.pid] = per_pid.get(p.pid, 0) + _kb(b.size)
                if b.size is None:
                    unknown_pids.add(p.pid)
                out.append(',"%d(%d) refs"' % (fds, maps) if csv else "%9d(%6d) refs |" % (fds, maps))
            else:
                out.append(',""' if csv else "%22s |" % "--")
        total += _kb(b.size)
        out.append("\n")
    out.append("------------------------------------\n")
    if csv:
        out.append('"Total Size(kB)",')
        out.extend('"%s:%d size(kB)",' % (_comm(snap, p.pid), p.pid) for p in procs)
        out.append("\n%s" % _sized(total, bool(unknown), csv))
        out.extend(",%s" % _sized(per_pid.get(p.pid, 0), p.pid in unknown_pids, csv) for p in procs)
    else:
        out.append("%-16s  %13s kB |%16s |%16s |" % ("TOTALS", _sized(total, bool(unknown)), "n/a", "n/a"))
        out.extend("%19s kB |" % _sized(per_pid.get(p.pid, 0), p.pid in unknown_pids) for p in procs)
    out.append("\n")
    out.append(unknown_line(unknown, csv))
    return "".join(out)


def per_buffer(snap, csv: bool) -> str:
    out = []
    k = snap.kernel
    if k.dmabuf_source is None:
        out.append("Unable to read DMA-BUF per-buffer stats from device\n")
    bufs = sorted((b for b in snap.buffers if b.kind == "dmabuf"), key=lambda b: b.inode or 0)
    exporters: Dict[str, List[int]] = {}
    for b in bufs:
        e = exporters.setdefault(_exporter(b), [0, 0, 0])
        e[0] += 1
        e[1] += b.size or 0
        e[2] += b.size is None
    out.append(f"\n\n{SEP} DMA-BUF per-buffer stats {SEP}\n")
    out.append('"Dmabuf Inode","Size(bytes)","Exporter Name"\n' if csv else
               "    Dmabuf Inode |     Size(bytes) |    Exporter Name                    |\n")
    for b in bufs:
        exp = printable(b.exporter or "")
        size = _sized(b.size or 0, b.size is None, csv)
        out.append('%d,%s,"%s"\n' % (b.inode or 0, size, exp) if csv else
                   "%16d |%16s | %16s \n" % (b.inode or 0, size, exp))
    out.append(f"\n\n{SEP} DMA-BUF exporter stats {SEP}\n")
    out.append('"Exporter Name","Total Count","Total Size(bytes)"\n' if csv else
               "      Exporter Name              | Total Count |     Total Size(bytes)   |\n")
    for name in sorted(exporters):
        n, size, unknown = exporters[name]
        size = _sized(size, bool(unknown), csv)
        out.append('"%s",%d,%s\n' % (name, n, size) if csv else "%32s | %12d| %s\n" % (name, n, size))
    out.append(f"\n\n{SEP} DMA-BUF total stats {SEP}\n")
    # the kernel's table has every size; without it, the buffers processes hold (some may be ?)
    unknown = 0 if k.dmabuf_source else sum(b.size is None for b in bufs)
    count = k.dmabuf_exported_count if k.dmabuf_source else len(bufs)
    size = k.dmabuf_exported_bytes if k.dmabuf_source else sum(b.size or 0 for b in bufs)
    size = _sized(size or 0, bool(unknown), csv)
    out.append('"Total DMA-BUF count","Total DMA-BUF size(bytes)"\n%d,%s\n' % (count or 0, size) if csv else
               "Total DMA-BUF count: %d, Total DMA-BUF size(bytes): %s\n" % (count or 0, size))
    out.append(unknown_line(unknown, csv))
    return "".join(out)


def shown_pids(args):
    """The processes shown: the PID argument (Android's) or -p (memtrack's), not both; None
    for all."""
    if args.dump_pid is None:
        return args.pid
    if args.pid is not None:
        raise MemtrackError("dmabuf-dump: give the PID argument or -p, not both")
    if args.dump_pid <= 0:
        raise MemtrackError(f"dmabuf-dump: invalid process id {args.dump_pid}")
    return {args.dump_pid}


def run(args) -> int:
    pids = shown_pids(args)
    if pids is not None and (args.table or args.per_buffer):
        raise MemtrackError("dmabuf-dump: -a and -b take no PID")   # nor -p
    if args.kind is not None and args.kind != {"dmabuf"}:
        raise MemtrackError("dmabuf-dump shows dma-bufs only: --kind does not apply")
    check_exclusive(args)
    snap = get_snapshot(args)
    csv = args.format == "csv" or args.csv
    view = snap.restrict(kinds={"dmabuf"})
    filt = {"kinds": ["dmabuf"]}
    if pids is not None:
        for pid in sorted(pids):
            if pid not in snap.process_map and pid in snap.skipped.denied:
                raise MemtrackError(f"pid {pid}: access denied ({args.denied_hint})")
        view = view.restrict(pids=pids)
        filt["pids"] = sorted(pids)
    if args.json:
        emit_json(view, args, filt)
    elif args.per_buffer and args.table:
        # Android's order: the per-buffer stats, two blank lines, then the table
        emit(per_buffer(snap, csv) + "\n\n" + table(snap, view, csv), args)
    elif args.per_buffer:
        emit(per_buffer(snap, csv), args)
    elif args.table:
        emit(table(snap, view, csv), args)
    else:
        emit(per_process(snap, view, csv), args)
    return 0
