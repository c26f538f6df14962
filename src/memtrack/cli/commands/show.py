"""memtrack show PID: the buffers one process holds, one line each (the /proc/PID/memtrack
view the 2016 proposal asked for)."""
from __future__ import annotations

from ...account import account
from ...errors import MemtrackError
from ...views.table import Column, human, printable, render, to_csv
from ..common import check_exclusive, emit, emit_json, get_snapshot, pid_arg, refuse, table_width

NAME = "show"
HELP = "the shared buffers of one process, with their other holders"
ORDER = 1


def add_arguments(p):
    p.add_argument("target_pid", type=_pid_or_cgroup, metavar="PID",
                   help="a process, or a cgroup path (/system.slice/x.service: the buffers its "
                        "processes hold, what the memory controller charged it, and, live as root, "
                        "who holds the pages it was charged for)")


class CgroupPath(str):
    """show's argument when it names a cgroup (it starts with /) rather than a pid."""


def _pid_or_cgroup(text: str):
    return CgroupPath(text) if text.startswith("/") else pid_arg(text)


def alloc_text(b, raw=False) -> str:
    """A buffer's allocated bytes: "?" where unknown (an older capture, no stat of it), with
    the swapped part where the kernel tells it apart."""
    if b.allocated is None:
        return "?"
    if b.swapped:
        return f"{human(b.allocated, raw)} ({human(b.swapped, raw)} swapped)"
    return human(b.allocated, raw)


def mem_share(b, pid):
    """pid's share of b's allocated bytes, split as pss is; None where unknown."""
    if b.allocated is None or pid not in b.holders:
        return None
    from ...account import pss_shares
    return pss_shares(b.allocated, b.holders)[pid]


def holder_text(snap, b, me=None, limit=8) -> str:
    if not b.holders:
        return "kernel only"
    parts = []
    for pid in b.holders[:limit]:
        pr = snap.process_map.get(pid)
        tag = f"{pid}({pr.comm})" if pr and pr.comm else str(pid)
        parts.append("self" if pid == me else tag)
    if len(b.holders) > limit:
        parts.append(f"+{len(b.holders) - limit} more")
    return ",".join(parts)


def absent(src, pid: int, root=None):
    """Why pid is not in the source src (a Source, or a saved Snapshot, which lists only the
    processes holding buffers) that --root names, or None if it is there."""
    from ...errors import ProcessGone
    from ...model import Snapshot
    if isinstance(src, Snapshot):
        listed = pid in src.process_map
    else:
        try:
            listed = pid in src.pids()
        except ProcessGone:
            return None             # the scan will say what is wrong with the source
    if listed:
        return None
    if getattr(src, "live", False):
        return "no such process"
    return f"not in {root}" if root else f"not in the capture from {src.label}"


def run(args) -> int:
    check_exclusive(args)
    refuse(args, "show", "pid", why="the process is its PID argument")
    if isinstance(args.target_pid, CgroupPath):
        from ..cgroupshow import run as show_cgroup
        return show_cgroup(args, str(args.target_pid))
    pid = args.target_pid
    why = []
    snap = get_snapshot(args, on_source=lambda src: why.append(absent(src, pid, args.root)))
    proc = snap.process_map.get(pid)
    if proc is None:
        if pid in snap.skipped.denied:
            raise MemtrackError(f"pid {pid}: access denied ({args.denied_hint})")
        if pid in snap.skipped.vanished:
            raise MemtrackError(f"pid {pid}: exited during the scan")
        if pid in snap.skipped.unreadable:
            raise MemtrackError(f"pid {pid}: could not be read")
        if why and why[0]:
            raise MemtrackError(f"pid {pid}: {why[0]}")
        if args.json:
            return emit_json(snap.restrict(pids={pid}), args, {"pids": [pid]})
        emit(f"pid {pid} holds no shared buffers\n", args)
        return 0
    view = snap.restrict(pids={pid}, kinds=args.kind)
    if args.json:
        return emit_json(view, args, {"pids": [pid]})
    acct = account(snap)
    share = acct.shares
    refs = sorted(view.process_map[pid].refs,
                  key=lambda r: (-(snap.buffer(r.buffer).size or -1), r.buffer))
    raw = args.bytes
    if args.csv:
        rows = []
        for r in refs:
            b = snap.buffer(r.buffer)
            rows.append([b.id, b.kind, b.inode, b.size, share.get(b.id, {}).get(pid), " ".join(map(str, r.fds)),
                         len(r.vmas), r.mapped, b.exporter, b.name, " ".join(map(str, b.holders)),
                         b.allocated, mem_share(b, pid), len(r.private)])
        emit(to_csv(["buffer", "kind", "inode", "size", "pss", "fds", "maps", "mapped", "exporter",
                     "name", "holders", "allocated", "mem", "private_maps"], rows), args)
        return 0
    u = acct.processes[pid].total
    head = (printable(f"pid {pid} ({proc.comm})  {proc.cmdline}") + "\n"
            f"rss {human(u.rss, raw)}  pss {human(u.pss, raw)}  uss {human(u.uss, raw)}  "
            f"mem {human(u.mem, raw)}{'+' if u.unknown_alloc else ''}  "
            f"mapped {human(u.mapped, raw)}  buffers {u.buffers}"
            + (f"  in_rss {human(u.in_rss, raw)}" if snap.smaps else "")
            + (f"  ({u.unknown} of unknown size)" if u.unknown else "") + "\n\n")
    cols = [Column("Kind", "<"), Column("Inode"), Column("Size"), Column("Alloc"), Column("Pss"),
            Column("Mem"), Column("Fds", "<"), Column("Maps"), Column("Mapped")]
    if snap.smaps:
        cols.append(Column("InRss"))
    cols += [Column("Exporter", "<"), Column("Name", "<"), Column("Holders", "<")]
    rows = []
    for r in refs:
        b = snap.buffer(r.buffer)
        m = mem_share(b, pid)
        row = [b.kind, "-" if b.inode is None else str(b.inode), human(b.size, raw), alloc_text(b, raw),
               human(share.get(b.id, {}).get(pid), raw) if b.size is not None else "?",
               human(m, raw) if m is not None else "?",
               ",".join(map(str, r.fds)) or "-",
               str(len(r.vmas)) + (f"+{len(r.private)}p" if r.private else ""), human(r.mapped, raw)]
        if snap.smaps:
            row.append(human(r.in_rss, raw))
        row += [b.exporter or "-", b.name or "-", holder_text(snap, b, me=pid)]
        rows.append(row)
    foot = ""
    if any(r.private for r in refs):
        foot = ("\nN+Mp: N shared and M private (MAP_PRIVATE) mappings. A private mapping keeps "
                "the buffer alive; the pages written through it are this process's own memory, "
                "not the buffer's (not in Mapped or InRss).\n")
    emit(head + render(cols, rows, width=table_width(args)) + foot, args)
    return 0
