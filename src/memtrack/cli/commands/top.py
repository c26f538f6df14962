"""memtrack top: a live, full-screen per-process view (needs `rich`: pip install 'memtrack[top]').

Each refresh goes through IncrementalScanner, so only processes whose signature moved are
re-read. Keys: p/m/r/u/d sort by pss/mem/rss/uss/delta, k cycles the kind filter, q quits.
"""
from __future__ import annotations

import collections
import io
import math
import os
import select
import sys
import time

from ...errors import MemtrackError
from ...model import KINDS

NAME = "top"
HELP = "live full-screen view of shared-buffer memory per process, with deltas and events (needs rich)"
ORDER = 25

SORTS = {"p": "pss", "m": "mem", "r": "rss", "u": "uss", "d": "delta"}


def add_arguments(p):
    p.add_argument("-d", "--delay", type=float, default=2.0, metavar="SECONDS",
                   help="seconds between refreshes (default 2)")
    p.add_argument("-n", "--frames", type=int, default=None, metavar="N", help="exit after N refreshes")
    p.add_argument("--once", action="store_true", help="print one frame and exit (for pipes)")
    p.add_argument("-s", "--sort", choices=sorted(SORTS.values()), default="pss", help="initial sort key")
    p.add_argument("--events", type=int, default=8, metavar="N",
                   help=f"last events shown (default 8, at most {MAX_EVENTS})")
    p.add_argument("--verify-every", type=int, default=30, metavar="K",
                   help="re-read every process at least once per K refreshes (default 30; 0: never)")


MAX_DELAY = 86400.0
MAX_EVENTS = 1000


def check(args) -> None:
    """What top cannot honour, and numbers out of range: one line naming the option."""
    if args.json or args.csv:
        raise MemtrackError("top has no --json or --csv output (ps --json and ps --csv have the same figures)")
    if args.output and not args.once and args.frames is None:
        raise MemtrackError("top -o FILE needs --once or -n N: it writes the frames once they are all shown")
    if not (math.isfinite(args.delay) and 0 <= args.delay <= MAX_DELAY):
        raise MemtrackError(f"--delay {args.delay}: want seconds from 0 to {MAX_DELAY:.0f}")
    if args.frames is not None and args.frames < 1:
        raise MemtrackError(f"--frames {args.frames}: want 1 or more")
    if not 0 <= args.events <= MAX_EVENTS:
        raise MemtrackError(f"--events {args.events}: want 0 to {MAX_EVENTS}")
    if args.verify_every < 0:
        raise MemtrackError(f"--verify-every {args.verify_every}: want 0 (never) or more")


class TopState:
    """What the view shows; kept apart from rendering so keys re-render without rescanning."""

    def __init__(self, args):
        from ...incremental import live_refresher
        # the bpf object (where --backend picks it) is loaded once, here, not per refresh
        self.scanner = live_refresher(getattr(args, "backend", "auto"), args.smaps, args.verify_every)
        self.sort = args.sort
        kinds = sorted(args.kind) if args.kind else None
        self.kind_cycle = [None] + list(KINDS)
        self.kind = kinds[0] if kinds and len(kinds) == 1 else None
        self.kinds = set(kinds) if kinds else None
        self.pids = args.pid
        self.events = collections.deque(maxlen=max(0, args.events))
        self.frame = 0
        self.snap = self.acct = self.prev_acct = self.start_acct = None
        self.raw = args.bytes

    def refresh(self):
        from ...account import account
        from ...diff import diff
        snap = self.scanner.refresh()
        same = (self.snap is not None and snap.buffers is self.snap.buffers
                and snap.processes is self.snap.processes)
        # the scanner hands back the previous facts when nothing moved: nothing to recount
        acct = self.acct if same else account(snap)
        if self.snap is not None and not same:
            stamp = time.strftime("%H:%M:%S")
            d = diff(self.snap, snap)
            for e in d.refs:
                if self.pids is not None and e.pid not in self.pids:
                    continue                       # events follow the view's -p and --kind
                if self.kinds is not None and e.buffer.kind not in self.kinds:
                    continue
                self.events.append((stamp, e))
            for e in d.buffers:                    # a buffer filled up or trimmed
                if e.action not in ("fill", "trim"):
                    continue
                if self.pids is not None and not set(self.pids) & set(e.buffer.holders):
                    continue
                if self.kinds is not None and e.buffer.kind not in self.kinds:
                    continue
                self.events.append((stamp, e))
        self.prev_acct = self.acct or acct
        self.start_acct = self.start_acct or acct
        self.snap, self.acct = snap, acct
        self.frame += 1

    def usage(self, acct, pid):
        """(rss, pss, uss, buffers, mem) of pid in acct, over the kinds shown."""
        pu = acct.process(pid)
        kinds = {self.kind} if self.kind else self.kinds
        if not kinds:
            u = pu.total
            return (u.rss, u.pss, u.uss, u.buffers, u.mem)
        rss = pss = uss = n = mem = 0
        for k in kinds:
            u = pu.by_kind.get(k)
            if u:
                rss, pss, uss, n = rss + u.rss, pss + u.pss, uss + u.uss, n + u.buffers
                mem += u.mem
        return (rss, pss, uss, n, mem)

    def key(self, ch: str) -> bool:
        """Apply a key press; True when the view changed."""
        if ch in SORTS:
            self.sort = SORTS[ch]
            return True
        if ch == "k":
            i = self.kind_cycle.index(self.kind) if self.kind in self.kind_cycle else 0
            self.kind = self.kind_cycle[(i + 1) % len(self.kind_cycle)]
            self.kinds = None
            return True
        return False

    def rows(self):
        out = []
        for p in self.snap.processes:
            if self.pids is not None and p.pid not in self.pids:
                continue
            u = self.usage(self.acct, p.pid)
            if u[3] == 0:
                continue                           # holds nothing of the kinds shown
            prev = self.usage(self.prev_acct, p.pid)
            first = self.usage(self.start_acct, p.pid)
            out.append((p, u, u[1] - prev[1], u[1] - first[1]))
        idx = {"rss": 0, "pss": 1, "uss": 2, "mem": 4}
        if self.sort == "delta":
            out.sort(key=lambda r: (-abs(r[2]), -abs(r[3]), -r[1][1], r[0].pid))
        else:
            i = idx[self.sort]
            out.sort(key=lambda r: (-r[1][i], r[0].pid))
        return out


def render(state: TopState, height=None):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text
    from ...util.text import oneline
    from ...views.table import human, printable
    raw = state.raw
    snap, acct = state.snap, state.acct
    st = state.scanner.stats

    def signed(n):
        return "0" if n == 0 else ("+" if n > 0 else "-") + human(abs(n), raw)

    rows = state.rows()
    tot = [sum(r[1][i] for r in rows) for i in range(5)]
    shown = {state.kind} if state.kind else state.kinds
    if shown:                                      # the figures of the kinds in the table
        from ...account import footing
        held, ko, _, _ = footing(snap, shown)
    else:
        held, ko = acct.held_bytes, acct.kernel_only_bytes
    exported = snap.kernel.dmabuf_exported_bytes
    head = Text()
    head.append(f"memtrack top  {time.strftime('%H:%M:%S')}  refresh {state.frame}", style="bold")
    head.append(f"  sort: {state.sort}  kind: {state.kind or (','.join(sorted(state.kinds)) if state.kinds else 'all')}\n")
    head.append(f"held by processes: {human(held, raw)}   pss total: {human(tot[1], raw)}   "
                f"mem total: {human(tot[4], raw)}   "
                f"kernel-only: {'unknown' if ko is None else human(ko, raw)}"
                + ("" if shown and "dmabuf" not in shown else
                   f"   dma-buf exported: {'unknown' if exported is None else human(exported, raw)}")
                + "\n")
    head.append(f"{len(rows)} processes, {len(snap.buffers)} buffers; scan {st.seconds * 1000:.0f} ms, "
                f"{st.reread} of {st.processes} processes re-read"
                + (f"; {len(snap.skipped.denied)} denied" if snap.skipped.denied else "")
                + (f", {len(snap.skipped.vanished) + len(snap.skipped.unreadable)} not read"
                   if len(snap.skipped.vanished) + len(snap.skipped.unreadable) else ""))
    table = Table(box=None, pad_edge=False, expand=True, show_edge=False, header_style="bold reverse")
    # Mem after Bufs: readers of the columns before it keep their places
    for title in ("PID", "Rss", "Pss", "Uss", "dPss", "dPss start", "Bufs", "Mem"):
        table.add_column(title, justify="right", no_wrap=True)
    table.add_column("Name", justify="left", no_wrap=True, overflow="ellipsis", ratio=1)
    limit = None
    if height is not None:
        limit = max(1, height - 6 - (len(state.events) + 1 if state.events else 0))
    for p, u, dlast, dstart in rows[:limit]:
        # a Text, not a str: rich would read a name's "[/b]" as markup (and fail on it)
        table.add_row(str(p.pid), human(u[0], raw), human(u[1], raw), human(u[2], raw), signed(dlast),
                      signed(dstart), str(u[3]), human(u[4], raw), Text(printable(oneline(p.name, 200))))
    parts = [head, table]
    if limit is not None and len(rows) > limit:
        parts.append(Text(f"... {len(rows) - limit} more"))
    if state.events:
        ev = Text("last events:\n", style="bold")
        for stamp, e in state.events:
            b = e.buffer
            if not hasattr(e, "pid"):                # a BufferEvent: filled or trimmed
                line = (f"{stamp} {b.id}{' ' + repr(b.name) if b.name else ''} "
                        f"{'filled' if e.action == 'fill' else 'trimmed'}: allocated "
                        f"{human(e.old_allocated, raw)} -> {human(b.allocated, raw)} of {human(b.size, raw)}")
                ev.append(printable(line) + "\n")
                continue
            what = f"fd {e.fd}" if e.via == "fd" else "map"
            line = (f"{stamp} {e.pid} {e.comm}: {'acquired' if e.action == 'acquire' else 'released'} "
                    f"{what} {b.id}{' ' + repr(b.name) if b.name else ''} {human(b.size, raw)}")
            ev.append(printable(line) + "\n")     # comm and name come from the process
        parts.append(ev)
    parts.append(Text("keys: p m r u d sort (pss mem rss uss delta)  k kind  q quit", style="dim"))
    return Group(*parts)


def run(args) -> int:
    try:
        from rich.console import Console
    except ImportError:
        raise MemtrackError("memtrack top needs the 'rich' package: pip install 'memtrack[top]' "
                            "(or pip install rich)") from None
    if args.root:
        raise MemtrackError("top watches this machine; use ps --root for a capture")
    check(args)

    class Quiet(Console):
        def on_broken_pipe(self):
            # rich exits 1 when the reader goes (top | head); main() exits 0, as every command
            raise BrokenPipeError

    state = TopState(args)
    sink = io.StringIO() if args.output else None      # -o: the frames, written at the end
    console = Quiet(file=sink)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Quiet(file=sink, width=132)     # a pipe: wide enough for the numbers and a name
    interactive = console.is_terminal and not args.once and sys.stdin.isatty()
    try:
        if not interactive:
            return _plain(state, console, args)
        return _live(state, console, args)
    except KeyboardInterrupt:
        return 0


def _plain(state, console, args) -> int:
    """Frames printed one after another and flushed: for pipes, logs and --once. With -o,
    written to the file at the end, atomically (those shown until a Ctrl-C, if one comes)."""
    from ..common import emit
    frames = 1 if args.once else args.frames
    try:
        while True:
            state.refresh()
            console.print(render(state))
            console.file.flush()
            if frames is not None and state.frame >= frames:
                break
            time.sleep(args.delay)
    except KeyboardInterrupt:
        if not args.output:
            raise
    if args.output:
        emit(console.file.getvalue(), args)
    return 0


def _live(state, console, args) -> int:
    import termios
    import tty
    from rich.live import Live
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)                 # keys without Enter; Ctrl-C still raises SIGINT
        with Live(console=console, screen=True, auto_refresh=False, transient=True) as live:
            while True:
                state.refresh()
                live.update(render(state, console.size.height), refresh=True)
                if args.frames is not None and state.frame >= args.frames:
                    return 0
                deadline = time.monotonic() + args.delay
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    ready, _, _ = select.select([fd], [], [], left)
                    if not ready:
                        break
                    ch = os.read(fd, 32).decode("utf-8", "replace")
                    if not ch or "q" in ch or "Q" in ch:
                        return 0
                    changed = False
                    for c in ch:
                        changed |= state.key(c)
                    if changed:
                        live.update(render(state, console.size.height), refresh=True)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
