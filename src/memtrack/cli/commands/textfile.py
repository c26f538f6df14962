"""memtrack textfile -o DIR/memtrack.prom: the metrics of `serve`, written for
node_exporter's textfile collector, atomically (temp file + rename in the same directory;
the temp name does not end in .prom, so the collector never reads it)."""
from __future__ import annotations

import os
import sys
import time

from ...errors import MemtrackError
from ..common import STDOUT, get_snapshot, output_arg

NAME = "textfile"
HELP = "write the Prometheus metrics to a file for node_exporter's textfile collector"
ORDER = 21


def add_arguments(p):
    p.add_argument("-o", "--output", required=True, type=output_arg, metavar="DIR/memtrack.prom",
                   help="file to write (- for stdout)")
    p.add_argument("--per-pid", action="store_true", help="a pid label on the per-process metrics")
    p.add_argument("--group-by", choices=("unit", "container", "pod", "cgroup"), default=None,
                   help="also export per group of processes (a label of that name): held figures "
                        "and what the memory controller charged the group's cgroups")
    p.add_argument("--top", type=_count, default=20, metavar="N",
                   help="with --group-by: the N groups of most pss, the others summed as 'rest' (default 20)")


def write(path: str, data: bytes) -> None:
    from ...util.atomic import atomic_write
    if path == STDOUT:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        atomic_write(path, data, 0o644)
    except OSError as exc:
        raise MemtrackError(f"{path}: {exc.strerror or exc}") from None


def run(args) -> int:
    from ...views.prometheus import families, render, require_client
    require_client()
    if os.path.isdir(args.output):
        raise MemtrackError(f"{args.output}: is a directory (name the file, e.g. {args.output.rstrip('/')}/memtrack.prom)")
    t0 = time.monotonic()
    snap = get_snapshot(args)
    write(args.output, render(families(snap, per_pid=args.per_pid, scan_seconds=time.monotonic() - t0,
                                         group_by=args.group_by, top=args.top)))
    if not args.quiet and args.output != STDOUT:
        print(f"memtrack: wrote {args.output}", file=sys.stderr)
    return 0


def _count(text: str) -> int:
    import argparse
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise argparse.ArgumentTypeError(f"not a count of groups: {text!r}")
    return int(text)
