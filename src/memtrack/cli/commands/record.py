"""memtrack record -o history.db: append snapshots of this machine to an SQLite history."""
from __future__ import annotations

import re
import signal
from dataclasses import replace
import sys
import time

from ...errors import MemtrackError
from ..common import STDOUT, categorizer, count_arg, output_arg, refuse, report_skipped, seconds_in_range

NAME = "record"
HELP = "append a snapshot every INTERVAL seconds to an SQLite history (for report, plot, export-trace)"
ORDER = 30

#: the shortest interval: a snapshot scans every process, and back-to-back scans (-i 0) fill
#: a history with hundreds of thousands of near-identical rows an hour for nothing
MIN_INTERVAL = 0.1


def duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if not m:
        import argparse
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30, 90s, 5m, 2h)")
    mult = {"ms": 0.001, None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return seconds_in_range(float(m.group(1)) * mult, text, zero=True)


def add_arguments(p):
    p.add_argument("-o", "--output", type=output_arg, required=True, metavar="history.db",
                   help="database to create or append to")
    p.add_argument("-i", "--interval", type=duration, default=1.0, metavar="SECONDS",
                   help=f"seconds between snapshots (default 1; at least {MIN_INTERVAL}: "
                        f"a shorter one is raised to {MIN_INTERVAL}, with a note)")
    p.add_argument("--duration", type=duration, default=None, metavar="D",
                   help="stop after D (30, 90s, 5m, 2h); default: until Ctrl-C or SIGTERM")
    p.add_argument("-n", "--count", type=int, default=None, metavar="N", help="stop after N snapshots")
    p.add_argument("--verify-every", type=count_arg, default=30, metavar="K",
                   help="re-read every process at least once per K snapshots even if its "
                        "signature did not change (default 30; 1 = full scans; 0 = never)")


def _stop(signum, frame):
    raise KeyboardInterrupt


def run(args) -> int:
    from ...history import Recorder, check_path_writable
    from ...incremental import live_refresher
    if args.root:
        raise MemtrackError("record watches this machine; --root is for reading captures")
    refuse(args, "record", "json", "csv", why="it writes an SQLite history")
    refuse(args, "record", "kind", why="it records every kind")
    if args.interval < 0 or (args.count is not None and args.count < 1):
        raise MemtrackError("--interval must be >= 0 and --count >= 1")
    if args.output == STDOUT:
        raise MemtrackError("record -o -: a history is an SQLite database, which stdout cannot hold; "
                            "name a file")
    check_path_writable(args.output)
    if args.interval < MIN_INTERVAL:
        if not args.quiet:
            print(f"memtrack: record: --interval {args.interval:g} s is below the floor; "
                  f"recording every {MIN_INTERVAL:g} s", file=sys.stderr)
        args.interval = MIN_INTERVAL
    # -p narrows what is stored, not what is scanned: pss needs every holder
    scanner = live_refresher(getattr(args, "backend", "auto"), args.smaps, args.verify_every)
    categorized = categorizer(args)
    rec = Recorder(args.output, interval=args.interval)
    old = signal.signal(signal.SIGTERM, _stop)
    start = time.monotonic()
    due = start
    skipped_reported = False
    prev = None
    try:
        while True:
            raw = scanner.refresh()
            if prev is not None and raw.buffers is prev[0].buffers and raw.processes is prev[0].processes:
                # nothing moved: keep the categorized objects too, so the recorder sees that
                snap = replace(prev[1], taken_at=raw.taken_at)
            else:
                snap = categorized(raw)
            prev = (raw, snap)
            rec.add(snap, pids=args.pid)
            if not skipped_reported:
                report_skipped(snap, quiet=args.quiet)
                skipped_reported = True
            if args.count is not None and rec.snapshots >= args.count:
                break
            due += args.interval
            now = time.monotonic()
            if args.duration is not None and due - start > args.duration + 1e-9:
                break
            if due > now:
                time.sleep(due - now)
            else:
                due = now                       # fell behind: no burst to catch up
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        rec.close()
    if not args.quiet:
        print(f"memtrack: recorded {rec.snapshots} snapshots to {args.output}", file=sys.stderr)
    return 0
