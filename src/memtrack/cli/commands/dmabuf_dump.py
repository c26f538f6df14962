"""memtrack dmabuf-dump [PID|-p PIDS] [-a|-b] [-o raw|csv]: Android's dmabuf_dump, line for line,
from memtrack's accounting (system/memory/libmeminfo/libdmabufinfo/tools/dmabuf_dump.cpp).

Differences, all on purpose: Pss is memtrack's exact split among every holder (also with a
PID, where Android sees only that process); kernel_rss is the dma-bufs no process holds
(Android: the kernel total minus the buffers of the processes shown); processes come in
pid order.
"""
from __future__ import annotations

import sys
from typing import Dict, List

from ...account import account
from ...errors import MemtrackError
from ...json_out import to_json
from ...views.table import printable
from ..common import check_exclusive, emit, get_snapshot
from .matrix import cells

NAME = "dmabuf-dump"
HELP = "dma-buf report in the layout of Android's dmabuf_dump (-a grid, -b per-buffer stats)"
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


def per_process(snap, view, csv: bool) -> str:
    acct = account(snap)
    bufs = {b.id: b for b in view.buffers}
    out: List[str] = []
    if not bufs:
        return "dmabuf info not found ¯\\_(ツ)_/¯\n"
    total_rss = total_pss = 0
    for p in sorted(view.processes, key=lambda p: p.pid):
        mine = sorted((bufs[r.buffer] for r in p.refs if r.buffer in bufs), key=lambda b: b.inode or 0)
        if not mine:
            continue
        usage = acct.process(p.pid).by_kind["dmabuf"]
        rss, pss = usage.rss, usage.pss
        if csv:
            out.append(f"\t{_comm(snap, p.pid)}:{p.pid}\n")
            out.append('"Name","Rss(kB)","Pss(kB)","nr_procs","Inode","Exporter"\n')
        else:
            out.append("%16s:%-5d\n" % (_comm(snap, p.pid), p.pid))
            out.append("%22s %16s %16s %16s %16s %22s\n" % ("Name", "Rss", "Pss", "nr_procs", "Inode", "Exporter"))
        for b in mine:
            share = acct.shares.get(b.id, {}).get(p.pid, 0)
            name, exp = printable(b.name or "<unknown>"), _exporter(b)
            if csv:
                out.append('"%s",%d,%d,%d,%d,%s\n' % (name, _kb(b.size), _kb(share), len(b.holders),
                                                     b.inode or 0, exp))
            else:
                out.append("%22s %13d kB %13d kB %16d %16d  %22s\n" % (
                    name, _kb(b.size), _kb(share), len(b.holders), b.inode or 0, exp))
        if csv:
            out.append('\nPROCESS TOTAL\n"Rss total(kB)","Pss total(kB)"\n%d,%d\n' % (_kb(rss), _kb(pss)))
        else:
            out.append("%22s %13d kB %13d kB %16s\n" % ("PROCESS TOTAL", _kb(rss), _kb(pss), ""))
        out.append("----------------------\n")
        total_rss += rss
        total_pss += pss
    a = account(snap.restrict(kinds={"dmabuf"}))
    kernel_rss = a.kernel_only_bytes
    exported = snap.kernel.dmabuf_exported_bytes
    if kernel_rss is None:
        if exported is not None and exported >= a.held_bytes:
            kernel_rss = exported - a.held_bytes
        else:
            kernel_rss = 0
            print("memtrack: note: dma-bufs held by no process unknown (no kernel dma-buf table or "
                  "processes unread): kernel_rss shows 0", file=sys.stderr)
    total = exported if exported is not None else a.held_bytes + kernel_rss
    if csv:
        out.append('\tTOTALS\n"dmabuf total (kB)","kernel_rss (kB)","userspace_rss (kB)","userspace_pss (kB)"\n')
        out.append("%d,%d,%d,%d\n" % (_kb(total), _kb(kernel_rss), _kb(total_rss), _kb(total_pss)))
    else:
        out.append("dmabuf total: %d kB kernel_rss: %d kB userspace_rss: %d kB userspace_pss: %d kB\n" % (
            _kb(total), _kb(kernel_rss), _kb(total_rss), _kb(total_pss)))
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
    total = 0
    for b in bufs:
        fd_pids = sum(1 for p in procs if refs.get((b.id, p.pid), (0, 0))[0])
        map_pids = sum(1 for p in procs if refs.get((b.id, p.pid), (0, 0))[1])
        if csv:
            out.append("%d,%d,%d,%d" % (b.inode or 0, _kb(b.size), fd_pids, map_pids))
        else:
            out.append("%16d |%13d kB |%16d |%16d |" % (b.inode or 0, _kb(b.size), fd_pids, map_pids))
        for p in procs:
            fds, maps = refs.get((b.id, p.pid), (0, 0))
            if fds or maps:
                per_pid[p.pid] = per_pid.get(p.pid, 0) + _kb(b.size)
                out.append(',"%d(%d) refs"' % (fds, maps) if csv else "%9d(%6d) refs |" % (fds, maps))
            else:
                out.append(',""' if csv else "%22s |" % "--")
        total += _kb(b.size)
        out.append("\n")
    out.append("------------------------------------\n")
    if csv:
        out.append('"Total Size(kB)",')
        out.extend('"%s:%d size(kB)",' % (_comm(snap, p.pid), p.pid) for p in procs)
        out.append("\n%d" % total)
        out.extend(",%d" % per_pid.get(p.pid, 0) for p in procs)
    else:
        out.append("%-16s  %13d kB |%16s |%16s |" % ("TOTALS", total, "n/a", "n/a"))
        out.extend("%19d kB |" % per_pid.get(p.pid, 0) for p in procs)
    out.append("\n")
    return "".join(out)


def per_buffer(snap, csv: bool) -> str:
    out = []
    k = snap.kernel
    if k.dmabuf_source is None:
        out.append("Unable to read DMA-BUF per-buffer stats from device\n")
    bufs = sorted((b for b in snap.buffers if b.kind == "dmabuf"), key=lambda b: b.inode or 0)
    exporters: Dict[str, List[int]] = {}
    for b in bufs:
        e = exporters.setdefault(_exporter(b), [0, 0])
        e[0] += 1
        e[1] += b.size or 0
    out.append(f"\n\n{SEP} DMA-BUF per-buffer stats {SEP}\n")
    out.append('"Dmabuf Inode","Size(bytes)","Exporter Name"\n' if csv else
               "    Dmabuf Inode |     Size(bytes) |    Exporter Name                    |\n")
    for b in bufs:
        exp = printable(b.exporter or "")
        out.append('%d,%d,"%s"\n' % (b.inode or 0, b.size or 0, exp) if csv else
                   "%16d |%16d | %16s \n" % (b.inode or 0, b.size or 0, exp))
    out.append(f"\n\n{SEP} DMA-BUF exporter stats {SEP}\n")
    out.append('"Exporter Name","Total Count","Total Size(bytes)"\n' if csv else
               "      Exporter Name              | Total Count |     Total Size(bytes)   |\n")
    for name in sorted(exporters):
        n, size = exporters[name]
        out.append('"%s",%d,%d\n' % (name, n, size) if csv else "%32s | %12d| %d\n" % (name, n, size))
    out.append(f"\n\n{SEP} DMA-BUF total stats {SEP}\n")
    count = k.dmabuf_exported_count if k.dmabuf_source else len(bufs)
    size = k.dmabuf_exported_bytes if k.dmabuf_source else sum(b.size or 0 for b in bufs)
    out.append('"Total DMA-BUF count","Total DMA-BUF size(bytes)"\n%d,%d\n' % (count or 0, size or 0) if csv else
               "Total DMA-BUF count: %d, Total DMA-BUF size(bytes): %d\n" % (count or 0, size or 0))
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
    if args.table and args.per_buffer:
        raise MemtrackError("dmabuf-dump: -a and -b are exclusive (as in Android's dmabuf_dump)")
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
        emit(to_json(view, filt=filt) + "\n", args)
    elif args.per_buffer:
        emit(per_buffer(snap, csv), args)
    elif args.table:
        emit(table(snap, view, csv), args)
    else:
        emit(per_process(snap, view, csv), args)
    return 0
