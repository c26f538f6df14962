"""memtrack ps: one row per process, largest Pss first (procrank/smem columns)."""
from __future__ import annotations

import argparse

from ...account import account
from ...model import KINDS
from ...views.table import Column, human, render, to_csv
from ..common import emit, emit_json, name_cap, prepare, table_width

NAME = "ps"
HELP = "per-process table of shared-buffer memory (the default command)"
ORDER = 0
SORT_KEYS = ("pss", "mem", "rss", "uss", "mapped", "in_rss", "pid", "name", "gpu") + KINDS


def add_arguments(p):
    p.add_argument("-s", "--sort", choices=SORT_KEYS, default=argparse.SUPPRESS,
                   help="sort key (default pss; mem: the Mem column, allocated bytes; a kind name sorts by "
                        "that kind's pss; gpu by the Gpu column)")
    p.add_argument("-r", "--reverse", action="store_true", default=argparse.SUPPRESS,
                   help="reverse the order (smallest first)")
    p.add_argument("--group", choices=("cgroup", "unit", "container", "pod"), default=argparse.SUPPRESS,
                   help="one row per group of processes (a group is one holder), beside what the "
                        "memory controller charged its cgroups")


def sort_rows(procs, acct, key: str, reverse: bool, gpu=None):
    def k(p):
        if key == "pid":
            return p.pid
        if key == "name":
            return p.name
        if key == "gpu":
            return (gpu or {}).get(p.pid, 0)
        u = acct.processes[p.pid]
        if key in KINDS:
            ku = u.by_kind.get(key)
            return ku.pss if ku else 0
        return getattr(u.total, key)
    descending = key not in ("pid", "name")
    return sorted(procs, key=lambda p: (k(p), -p.pid if descending else p.pid), reverse=descending != reverse)


def run(args) -> int:
    snap, view = prepare(args)
    if getattr(args, "group", None):
        from ..groupview import run as run_groups
        return run_groups(snap, view, args, summary_lines)
    if args.json:
        return emit_json(view, args)
    acct = account(snap)
    kinds = [k for k in KINDS if any(k in acct.processes[p.pid].by_kind for p in view.processes)]
    if args.kind:
        kinds = [k for k in kinds if k in args.kind]
    # GEM memory is shown beside the buffer columns, never added to them (shared GEM objects
    # are dma-bufs too): a column of its own, only on machines with DRM clients
    gpu = None
    if snap.gpu:
        from ... import gpu as gpuacct
        gpu = gpuacct.per_process(snap)
    procs = sort_rows(view.processes, acct, getattr(args, "sort", "pss"), getattr(args, "reverse", False), gpu)
    smaps = snap.smaps

    def usage(pid):
        pu = acct.processes[pid]
        if args.kind:
            from ...account import Usage
            u = Usage()
            for k in kinds:
                if k in pu.by_kind:
                    u.add(pu.by_kind[k])
            return u, pu
        return pu.total, pu

    if args.csv:
        # mem and its unknowns after the columns older readers find by position
        header = ["pid", "rss", "pss", "uss", "mapped"] + (["in_rss"] if smaps else []) + \
                 [f"{k}_pss" for k in kinds] + (["gpu"] if gpu is not None else []) + \
                 ["unknown_size_buffers", "mem", "unknown_allocated_buffers", "comm", "cmdline"]
        rows = []
        for p in procs:
            u, pu = usage(p.pid)
            rows.append([p.pid, u.rss, u.pss, u.uss, u.mapped] + ([u.in_rss] if smaps else []) +
                        [pu.by_kind[k].pss if k in pu.by_kind else 0 for k in kinds] +
                        ([gpu.get(p.pid, 0)] if gpu is not None else []) +
                        [u.unknown, u.mem, u.unknown_alloc, p.comm, p.cmdline])
        emit(to_csv(header, rows), args)
        return 0
    raw = args.bytes
    # Mem: the share of what the buffers really hold (allocated bytes), split as Pss splits
    # the sizes; beside Pss so a sparse or untouched buffer shows at a glance
    cols = [Column("PID"), Column("Rss"), Column("Pss"), Column("Mem"), Column("Uss"), Column("Mapped")]
    if smaps:
        cols += [Column("InRss"), Column("Hidden")]
    cols += [Column(k) for k in kinds] + ([Column("Gpu")] if gpu is not None else []) + [Column("Name", "<")]
    from ...account import Usage
    tot = Usage()
    tot_kind = {k: Usage() for k in kinds}
    rows = []
    unknown_procs = unknown_alloc_procs = 0
    for p in procs:
        u, pu = usage(p.pid)
        tot.add(u)
        unknown_procs += bool(u.unknown)
        unknown_alloc_procs += bool(u.unknown_alloc)
        row = [str(p.pid), sized(u.rss, u.unknown, raw), sized(u.pss, u.unknown, raw),
               sized(u.mem, u.unknown_alloc, raw), sized(u.uss, u.unknown, raw), human(u.mapped, raw)]
        if smaps:
            row += [human(u.in_rss, raw), sized(u.hidden, u.unknown_alloc, raw)]
        for k in kinds:
            ku = pu.by_kind.get(k)
            if ku is not None:
                tot_kind[k].add(ku)
            row.append(sized(ku.pss, ku.unknown, raw) if ku else "-")
        if gpu is not None:
            row.append(human(gpu[p.pid], raw) if p.pid in gpu else "-")
        row.append(p.name)
        rows.append(row)
    foot = ["", sized(tot.rss, tot.unknown, raw), sized(tot.pss, tot.unknown, raw),
            sized(tot.mem, tot.unknown_alloc, raw), sized(tot.uss, tot.unknown, raw), human(tot.mapped, raw)]
    if smaps:
        foot += [human(tot.in_rss, raw), sized(tot.hidden, tot.unknown_alloc, raw)]
    foot += [sized(tot_kind[k].pss, tot_kind[k].unknown, raw) for k in kinds]
    if gpu is not None:
        foot.append(human(sum(gpu.get(p.pid, 0) for p in procs), raw))
    foot.append(f"TOTAL ({len(procs)} processes)")
    out = render(cols, rows, [foot], max_last=name_cap(args, 100), width=table_width(args))
    out += summary_lines(snap, acct, raw, args.kind)
    if unknown_procs:
        out += (f"+ {unknown_procs} processes hold buffers whose size could not be known "
                "(not counted; see `memtrack buffers`)\n")
    if unknown_alloc_procs and unknown_alloc_procs != unknown_procs:
        out += (f"+ {unknown_alloc_procs} processes hold buffers whose allocated bytes could not "
                "be known (not counted in Mem; an older capture, or no stat of them)\n")
    emit(out, args)
    return 0


def sized(n, unknown, raw=False) -> str:
    """A size that excludes buffers of unknown size: '?' if that is all there is, else 'N+'."""
    if not unknown:
        return human(n, raw)
    return "?" if n == 0 else human(n, raw) + "+"


def summary_lines(snap, acct, raw=False, kinds=None) -> str:
    """The line under the table: what processes hold, the kernel's dma-buf total, what is
    held by no process. Under --kind, over the buffers of those kinds only (and the dma-buf
    total only where dmabuf is among them), so the figures compare with the columns."""
    k = snap.kernel
    if kinds:
        from ...account import footing
        held, ko, _, unattributed = footing(snap, kinds)
        label = f"held by processes ({','.join(sorted(kinds))})"
    else:
        held, ko, unattributed = acct.held_bytes, acct.kernel_only_bytes, acct.unattributed_bytes
        label = "held by processes"
    parts = [f"{label}: {human(held, raw)}"]
    if k.dmabuf_source and (not kinds or "dmabuf" in kinds):
        parts.append(f"dma-buf exported: {human(k.dmabuf_exported_bytes, raw)} ({k.dmabuf_source})")
    if ko is not None:
        parts.append(f"kernel-only: {human(ko, raw)}")
    else:
        why = "no kernel dma-buf table" if not k.dmabuf_source else "some processes unread"
        parts.append(f"kernel-only: unknown ({why})")
    if unattributed:
        parts.append(f"unattributed: {human(unattributed, raw)}")
    return "; ".join(parts) + "\n"
