"""memtrack capture -o FILE.tar.gz: record this machine's /proc and /sys for later analysis,
or a device's (--adb, --ssh) through the POSIX sh script that --print-script shows."""
from __future__ import annotations

import os
import sys

from ...errors import MemtrackError
from ..common import STDOUT, missing_pids, output_arg, output_name, refuse, report_absent, report_skipped

NAME = "capture"
HELP = "write a capture archive of this machine (or of a device: --adb, --ssh), readable later with --root"
ORDER = 10


def add_arguments(p):
    p.add_argument("-o", "--output", type=output_arg, metavar="FILE.tar.gz",
                   help="archive to write (-: to stdout, a pipe or a file, not a terminal)")
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
    refuse(args, "capture", "json", "csv", why="it writes an archive; read it with --root ARCHIVE --json")
    refuse(args, "capture", "kind", why="an archive holds every kind; narrow when reading it with --root")
    if args.output == STDOUT and sys.stdout.isatty():
        raise MemtrackError("capture -o -: a tar.gz archive is not for a terminal; redirect stdout "
                            "to a file or a pipe")
    from ...remote import target_from_args
    target = target_from_args(args)
    if target is not None:
        return _remote(args, target)
    from ...capture import RecordingSource, archived_pids, write_archive
    from ...procfs import scan
    from ...sources.live import LiveSource
    if getattr(args, "backend", "auto") == "bpf" and not args.quiet:
        # an archive is the files a scan read: only the procfs backend reads files
        print("memtrack: note: capture records the /proc files it reads, so it scans with "
              "procfs (--backend bpf ignored)", file=sys.stderr)
    rec = RecordingSource(LiveSource())
    pids = sorted(args.pid) if args.pid is not None else None
    if pids is not None:
        # a pid that is not there is said so (an error if none is), not "exited during the scan"
        absent = missing_pids(rec.inner, pids)
        if absent:
            report_absent(absent, pids, {}, quiet=args.quiet)
            pids = [p for p in pids if p not in absent]
    snap = scan(rec, pids=pids, smaps=args.smaps)
    n = _write(lambda path: write_archive(rec, snap, path, pids=pids), args.output)
    report_skipped(snap, quiet=args.quiet)
    print(f"memtrack: wrote {output_name(args.output)}: {len(archived_pids(rec, snap))} processes, "
          f"{len(snap.buffers)} buffers, {n} members", file=sys.stderr)
    return 0


def _remote(args, target) -> int:
    from ...remote import TreeSource, transport_name, write_tree
    from ...procfs import scan
    pids = sorted(args.pid) if args.pid is not None else None
    tree = target.capture(fmt=args.format, pids=pids, smaps=args.smaps)
    n = _write(lambda path: write_tree(tree, path, transport_name(target)), args.output)
    snap = scan(TreeSource(tree, transport_name(target)), pids=pids, smaps=args.smaps)
    report_skipped(snap, quiet=args.quiet)
    print(f"memtrack: wrote {output_name(args.output)} from {target.label} ({tree.format}): "
          f"{len(snap.processes)} processes holding {len(snap.buffers)} buffers, {n} members",
          file=sys.stderr)
    return 0


def _write(write, path: str) -> int:
    """write(path) -> members written, for -o PATH; for -o -, the archive is written to a
    temporary file (it is written atomically, and a pipe cannot be renamed over) and copied
    to stdout."""
    if path != STDOUT:
        try:
            return write(path)
        except OSError as exc:
            raise MemtrackError(f"{path}: {exc.strerror or exc}") from None
    import shutil
    import tempfile
    with tempfile.TemporaryDirectory(prefix="memtrack-capture-") as d:
        tmp = os.path.join(d, "capture.tar.gz")
        try:
            n = write(tmp)
        except OSError as exc:
            raise MemtrackError(f"{tmp}: {exc.strerror or exc}") from None
        with open(tmp, "rb") as f:
            sys.stdout.flush()
            shutil.copyfileobj(f, sys.stdout.buffer)
            sys.stdout.buffer.flush()
    return n
