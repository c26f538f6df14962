"""Options every command shares, and the one way commands get a snapshot."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Set

from ..errors import MemtrackError
from ..model import KINDS, Snapshot


def _pid(text: str) -> int:
    """A pid as typed: ASCII digits only (int() also reads " 4_16" and full-width digits),
    and neither 0 nor above PID_MAX_LIMIT, which no process has."""
    from ..sources.base import is_pid
    if not (text.isascii() and text.isdigit() and len(text) < 20) or not is_pid(int(text)):
        raise ValueError(text)
    return int(text)


def pid_arg(text: str) -> int:
    try:
        return _pid(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a pid: {text!r}") from None


def _pid_list(text: str) -> Set[int]:
    try:
        out = {_pid(part) for part in text.replace(" ", ",").split(",") if part}
    except ValueError:
        out = None
    if not out:
        raise argparse.ArgumentTypeError(f"not a pid list: {text!r}")
    return out


#: the longest interval or duration taken: more is a typo (and 1e308 overflows time.sleep)
MAX_SECONDS = 366 * 86400


def seconds_in_range(value: float, text: str, zero: bool = False) -> float:
    """value (what text reads as, in seconds) if finite, positive (or 0 where zero is
    allowed) and at most MAX_SECONDS; else the usage error, quoting text."""
    if not (0 <= value <= MAX_SECONDS) or (value == 0 and not zero):   # nan fails every test
        low = "0 or more" if zero else "more than 0"
        raise argparse.ArgumentTypeError(f"{text!r}: must be {low} seconds, and at most a year "
                                         f"({MAX_SECONDS})")
    return value


def seconds_arg(text: str, zero: bool = False) -> float:
    """An interval in seconds, > 0 (a number: 2, 0.5, 1e-3); 0 too where zero is allowed."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    return seconds_in_range(value, text, zero)


def seconds_or_zero_arg(text: str) -> float:
    return seconds_arg(text, zero=True)


def count_arg(text: str) -> int:
    """A count that may be 0 (what 0 means is the option's to say), never negative."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"not a count (0 or more): {text!r}")
    return int(text)


#: -o - writes to stdout
STDOUT = "-"


def output_arg(text: str) -> str:
    """An -o FILE: not empty (an empty name wrote to stdout silently); - is stdout."""
    if not text:
        raise argparse.ArgumentTypeError("an empty file name (- is stdout)")
    return text


def output_name(path: str) -> str:
    """How a message names the output."""
    return "stdout" if path == STDOUT else path


def _kind_list(text: str) -> Set[str]:
    kinds = {k for k in text.replace(" ", ",").split(",") if k}
    bad = kinds - set(KINDS)
    if bad:
        raise argparse.ArgumentTypeError(f"unknown kind {', '.join(sorted(bad))} (kinds: {', '.join(KINDS)})")
    return kinds


def add_common(p: argparse.ArgumentParser, suppress: bool) -> None:
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    g = p.add_argument_group("source and selection")
    g.add_argument("--root", metavar="PATH", default=d(None),
                   help="read a capture archive, a /proc-like directory or a JSON snapshot instead of this machine")
    g.add_argument("-p", "--pid", type=_pid_list, metavar="PIDS", default=d(None),
                   help="only these processes (comma-separated); sharing is still counted over all")
    g.add_argument("--kind", type=_kind_list, metavar="KINDS", default=d(None),
                   help=f"only these kinds ({','.join(KINDS)})")
    g.add_argument("--adb", nargs="?", const="", metavar="SERIAL", default=d(None),
                   help="capture an Android device through adb (the one connected, or SERIAL) and analyze it here")
    g.add_argument("--ssh", metavar="HOST", default=d(None),
                   help="capture HOST through ssh (no Python needed there) and analyze it here")
    g.add_argument("--backend", choices=("auto", "procfs", "bpf"), default=d("auto"),
                   help="how to scan this machine: bpf reads kernel iterators (root, libbpf, "
                        "BTF), procfs reads /proc text; auto: bpf where it can run (default)")
    g.add_argument("--smaps", action="store_true", default=d(False),
                   help="also read smaps: how much of each buffer is already counted in RSS (in_rss)")
    g.add_argument("--rules", metavar="FILE", default=d(None),
                   help="category rules (TOML) to use before the shipped ones, or instead of them if "
                        "the file says `replace = true` (default: $XDG_CONFIG_HOME/memtrack/rules.toml)")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", default=d(False), help="the schema-1 JSON document")
    o.add_argument("--csv", action="store_true", default=d(False), help="CSV, sizes in bytes")
    o.add_argument("-b", "--bytes", action="store_true", default=d(False), help="sizes in bytes in tables")
    o.add_argument("-k", "--human", action="store_false", dest="bytes", default=d(False),
                   help="sizes 1024-based (KiB, MiB, GiB) in tables, the default: undoes -b")
    o.add_argument("-o", "--output", type=output_arg, metavar="FILE", default=d(None),
                   help="write the output (table, --json, --csv) to FILE, atomically: a reader sees "
                        "the old file or the new one, never a part (- is stdout)")
    o.add_argument("-q", "--quiet", action="store_true", default=d(False),
                   help="no notes on stderr (the count of processes skipped is still printed)")


def get_snapshot(args, pids_for_scan=None, on_source=None) -> Snapshot:
    """The snapshot the options name, for a command that runs once. -p restricts the view,
    not the scan: pss needs every holder. on_source(src) is called with the open source (or
    the saved Snapshot) before it is scanned, to ask it what the snapshot cannot tell."""
    from ..speed import no_gc
    absent = []
    named = getattr(args, "pid", None)
    origin = {}

    def on_source(src, inner=on_source):
        origin.update(source_origin(src))
        if named is not None:
            absent.extend(missing_pids(src, named))
        if inner is not None:
            inner(src)
    with no_gc():
        snap = load_snapshot(args, pids_for_scan, on_source)
    # what a command says of a denied process it was asked about (show, dmabuf-dump)
    args.denied_hint = denied_hint(snap, origin)
    report_skipped(snap, quiet=getattr(args, "quiet", False), origin=origin)
    if absent:
        report_absent(absent, named, origin, getattr(args, "root", None), getattr(args, "quiet", False))
    return snap


def missing_pids(src, pids) -> list:
    """Which of pids the source src (a Source, or a saved Snapshot) has no process for."""
    from ..errors import ProcessGone
    if isinstance(src, Snapshot):
        # a saved snapshot lists only the processes holding buffers (and those it skipped)
        there = set(src.process_map) | set(src.skipped.denied) | set(src.skipped.vanished) | \
            set(src.skipped.unreadable)
    else:
        try:
            there = set(src.pids())
        except ProcessGone:
            return []               # the scan will say what is wrong with the source
    return sorted(set(pids) - there)


def report_absent(absent, named, origin: dict, root=None, quiet: bool = False) -> None:
    """-p named processes that are not there: one line; an error when none of them is
    (a saved snapshot lists only the processes holding buffers: there, only a note)."""
    pids = ",".join(map(str, absent))
    if origin.get("saved"):
        if not quiet:
                print(f"memtrack: note: -p {pids}: not in {root} (a saved snapshot lists only the "
                  "processes holding buffers)", file=sys.stderr)
        return
    line = f"-p {pids}: " + (f"not in {root or origin.get('label')}" if "meta" in origin
                             else "no such process")
    if len(absent) == len(named):
        raise MemtrackError(line)
    print(f"memtrack: {line}", file=sys.stderr)


def source_origin(src) -> dict:
    """What report_skipped needs to know of where a snapshot came from: {"saved": True} for
    a JSON snapshot, {"meta": ...} for a capture (its meta.json), {} for this machine."""
    if isinstance(src, Snapshot):
        return {"saved": True}
    if getattr(src, "live", False):
        return {}
    try:
        meta = src.meta()
    except Exception:           # a source that cannot say: as if it said nothing
        meta = {}
    return {"meta": meta if isinstance(meta, dict) else {}, "label": getattr(src, "label", "")}


def denied_hint(snap: Snapshot, origin: Optional[dict] = None) -> str:
    """Why processes were denied, and what would help: root is never told to run as root,
    and what a capture or a saved snapshot could not read is not this run's to see."""
    origin = origin or {}
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    if origin.get("saved"):
        return "when the snapshot was taken"
    if "meta" in origin or snap.source != "live":
        uid = origin.get("meta", {}).get("uid")
        if uid == 0:
            return "when captured, even to root"
        if isinstance(uid, int) and not isinstance(uid, bool):
            return f"when captured, by uid {uid}: a capture as root sees them"
        return "when captured"
    if root:
        return "even to root: the kernel refused ptrace access"
    return "run as root to see them"


def load_snapshot(args, pids_for_scan=None, on_source=None) -> Snapshot:
    """get_snapshot without the notes on stderr (for servers that scan again and again)."""
    from ..procfs import scan
    from ..sources import open_source
    target = None
    if getattr(args, "adb", None) is not None or getattr(args, "ssh", None):
        from ..remote import target_from_args      # only then: it imports subprocess, tarfile...
        target = target_from_args(args)
    if getattr(args, "backend", "auto") == "bpf" and (target is not None or getattr(args, "root", None) is not None):
        raise MemtrackError("--backend bpf scans this machine; it cannot read --root, --adb or --ssh")
    if target is not None:
        from ..remote import TreeSource, transport_name
        tree = target.capture(pids=pids_for_scan, smaps=getattr(args, "smaps", False))
        src = TreeSource(tree, transport_name(target))
        if on_source is not None:
            on_source(src)
        snap = scan(src, pids=pids_for_scan, smaps=getattr(args, "smaps", False))
        return with_categories(snap, args)
    src = open_source(getattr(args, "root", None))
    if on_source is not None:
        on_source(src)
    if isinstance(src, Snapshot):
        snap = src
        if getattr(args, "smaps", False) and not snap.smaps:
            print("memtrack: note: this snapshot was saved without smaps: in_rss unknown", file=sys.stderr)
    else:
        try:
            snap = scan_source(src, getattr(args, "backend", "auto"), pids=pids_for_scan,
                               smaps=getattr(args, "smaps", False))
        finally:
            src.close()
    return with_categories(snap, args, overwrite=not isinstance(src, Snapshot))


def categorizer(args, overwrite: bool = True):
    """snap -> snap with categories, by the rules in force, loaded and compiled once: a
    command that refreshes (record, serve) keeps the rules and their per-value caches. A
    saved snapshot keeps the categories it was saved with unless --rules names a file."""
    from ..categories import categorize, load_rules
    path = getattr(args, "rules", None)
    rules = load_rules(path)
    overwrite = overwrite or path is not None
    return lambda snap: categorize(snap, rules, overwrite=overwrite)


def with_categories(snap: Snapshot, args, overwrite: bool = True) -> Snapshot:
    return categorizer(args, overwrite)(snap)


def scan_source(src, backend: str = "auto", pids=None, smaps: bool = False) -> Snapshot:
    """Scan with the backend --backend names; the snapshot records which ran and why."""
    from dataclasses import replace
    from ..bpf import BpfUnavailable, fallback_reason, open_backend
    from ..procfs import scan
    scanner, reason = open_backend(backend, live=getattr(src, "live", False))
    if scanner is not None:
        try:
            return scanner.scan(pids=pids, smaps=smaps, reason=reason)
        except BpfUnavailable as exc:
            reason = fallback_reason(backend, exc)
        finally:
            scanner.close()
    snap = scan(src, pids=pids, smaps=smaps)
    return replace(snap, backend_reason=reason) if reason else snap


def report_skipped(snap: Snapshot, quiet: bool = False, origin: Optional[dict] = None) -> None:
    sk = snap.skipped
    if sk.denied:
        hint = denied_hint(snap, origin)
        print(f"memtrack: access denied for {plural(len(sk.denied), 'process')} ({hint})",
              file=sys.stderr)
    if sk.unreadable:
        print(f"memtrack: {plural(len(sk.unreadable), 'process')} could not be read", file=sys.stderr)
    if not quiet:
        if sk.vanished:
            print(f"memtrack: note: {plural(len(sk.vanished), 'process')} exited during the scan", file=sys.stderr)
        from ..views.table import printable      # notes quote names and files from elsewhere
        for n in snap.notes:
            print(f"memtrack: note: {printable(n)}", file=sys.stderr)


def narrowed(snap: Snapshot, args) -> Snapshot:
    pids = getattr(args, "pid", None)
    kinds = getattr(args, "kind", None)
    if pids is None and kinds is None:
        return snap
    return snap.restrict(pids=pids, kinds=kinds)


def filter_doc(args) -> Optional[dict]:
    f = {}
    if getattr(args, "pid", None) is not None:
        f["pids"] = sorted(args.pid)
    if getattr(args, "kind", None) is not None:
        f["kinds"] = sorted(args.kind)
    return f or None


def prepare(args):
    """(snapshot, view): the snapshot the options name and the view -p/--kind narrow it to."""
    check_exclusive(args)
    snap = get_snapshot(args)
    return snap, narrowed(snap, args)


def emit_json(view: Snapshot, args) -> int:
    from ..json_out import to_json
    emit(to_json(view, filt=filter_doc(args)) + "\n", args)
    return 0


def emit(text: str, args=None) -> None:
    """The command's output, to stdout or, with -o FILE, atomically to FILE. Undecodable
    bytes in names (held as surrogates) are written as \\udcXX: in JSON that is a valid
    escape that reads back to the same name."""
    path = getattr(args, "output", None) if args is not None else None
    if path is not None and path != STDOUT:
        from ..util.atomic import atomic_write
        try:
            atomic_write(path, text.encode("utf-8", "backslashreplace"))
        except OSError as exc:
            raise MemtrackError(f"{path}: {exc.strerror or exc}") from None
        return
    sys.stdout.write(text)
    sys.stdout.flush()


_OPTION = {"pid": "-p", "kind": "--kind", "json": "--json", "csv": "--csv"}


def load_history(args, command: str, progress=None):
    """The history database a reader command (report, plot, export-trace) names: it reads
    that file, so --root and --kind are refused rather than ignored."""
    from ..history import load
    if args.root:
        raise MemtrackError(f"{command} reads the history given as argument, not --root")
    refuse(args, command, "kind", why="it does not narrow a history by kind")
    return load(args.history, progress=progress)


class Progress:
    """prog("step"): what a long job (a history of a million snapshots) is doing, as one
    status line on stderr that each step overwrites; prog.done() clears it. Only on a
    terminal and without -q: a log or a pipe gets just the command's own summary line."""

    def __init__(self, args):
        self.on = not getattr(args, "quiet", False) and sys.stderr.isatty()
        self.shown = False

    def __call__(self, step: str) -> None:
        if self.on:
            sys.stderr.write(f"\r\033[Kmemtrack: {step} ...")
            sys.stderr.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.shown = False


def refuse(args, command: str, *options: str, why: str = "") -> None:
    """A one-line error if any of these options (args attribute names) is given: command
    cannot honour it, and ignoring it would give an answer to another question."""
    for opt in options:
        if getattr(args, opt, None) not in (None, False):
            raise MemtrackError(f"{command} does not take {_OPTION[opt]}" + (f": {why}" if why else ""))


def check_exclusive(args) -> None:
    if getattr(args, "json", False) and getattr(args, "csv", False):
        raise MemtrackError("--json and --csv are exclusive")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else ("es" if word.endswith("s") else "s"))
