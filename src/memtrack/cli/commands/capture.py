"""memtrack capture -o FILE.tar.gz: record this machine's /proc and /sys for later analysis,
or a device's (--adb, --ssh) through the POSIX sh script that --print-script shows."""
from __future__ import annotations

import sys

from ...errors import MemtrackError
from ..common import report_skipped

NAME = "capture"
HELP = "write a capture archive of this machine (or of a device: --adb, --ssh), readable later with --root"
ORDER = 10


def add_arguments(p):
    p.add_argument("-o", "--output", metavar="FILE.tar.gz", help="archive to write")
    p.add_argument("--print-script", action="store_true",
                   help="print the POSIX sh capture script (for targets without Python) and exit")
    p.add_argument("--format", choices=("stream", "tar", "auto"), default="stream",
                   help="with --adb/--ssh: how the script sends the capture: its own stream format "
                        "(default: nothing written on the device, fastest), tar (staged in a temp dir "
                        "there), auto (tar when the device has tar and a writable temp dir)")


def run(args) -> int:
    if args.print_script:
        from ...remote import script_text
        sys.stdout.write(script_text())
        sys.stdout.flush()
        return 0
    if not args.output:
        raise MemtrackError("capture needs -o FILE.tar.gz (or --print-script)")
    if args.root:
        raise MemtrackError("capture records this machine; --root is for reading captures")
    from ...remote import target_from_args
    target = target_from_args(args)
    if target is not None:
        return _remote(args, target)
    from ...capture import RecordingSource, write_archive
    from ...scan import scan
    from ...sources.live import LiveSource
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


def _remote(args, target) -> int:
    from ...remote import TreeSource, transport_name, write_tree
    from ...scan import scan
    pids = sorted(args.pid) if args.pid is not None else None
    tree = target.capture(fmt=args.format, pids=pids, smaps=args.smaps)
    try:
        n = write_tree(tree, args.output, transport_name(target))
    except OSError as exc:
        raise MemtrackError(f"{args.output}: {exc.strerror or exc}") from None
    snap = scan(TreeSource(tree, transport_name(target)), pids=pids, smaps=args.smaps)
    report_skipped(snap, quiet=args.quiet)
    print(f"memtrack: wrote {args.output} from {target.label} ({tree.format}): "
          f"{len(snap.processes)} processes holding {len(snap.buffers)} buffers, {n} members",
          file=sys.stderr)
    return 0
