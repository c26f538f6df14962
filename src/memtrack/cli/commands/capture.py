"""memtrack capture -o FILE.tar.gz: record this machine's /proc and /sys for later analysis."""
from __future__ import annotations

import sys

from ...errors import MemtrackError
from ..common import report_skipped

NAME = "capture"
HELP = "write a capture archive of this machine, readable later with --root"
ORDER = 10


def add_arguments(p):
    p.add_argument("-o", "--output", required=True, metavar="FILE.tar.gz", help="archive to write")


def run(args) -> int:
    from ...capture import RecordingSource, write_archive
    from ...scan import scan
    from ...sources.live import LiveSource
    if args.root:
        raise MemtrackError("capture records this machine; --root is for reading captures")
    if getattr(args, "backend", "auto") == "bpf" and not args.quiet:
        # an archive is the files a scan read: only the procfs backend reads files
        print("memtrack: note: capture records the /proc files it reads, so it scans with "
              "procfs (--backend bpf ignored)", file=sys.stderr)
    rec = RecordingSource(LiveSource())
    pids = sorted(args.pid) if args.pid is not None else None
    snap = scan(rec, pids=pids, smaps=args.smaps)
    try:
        n = write_archive(rec, snap, args.output, pids=pids)
    except OSError as exc:
        raise MemtrackError(f"{args.output}: {exc.strerror or exc}") from None
    report_skipped(snap, quiet=args.quiet)
    print(f"memtrack: wrote {args.output}: {len(rec.procs) - snap.skipped.total} processes, "
          f"{len(snap.buffers)} buffers, {n} members", file=sys.stderr)
    return 0
