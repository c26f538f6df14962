"""memtrack: per-process accounting of shared buffers from interfaces the kernel already has.

Public API::

    import memtrack
    snap = memtrack.scan()                      # this machine (backend "auto": bpf where it can run)
    snap = memtrack.scan("capture.tar.gz")      # a capture archive or a directory tree
    snap = memtrack.load("snapshot.json")       # a saved JSON snapshot
    acct = memtrack.account(snap)               # rss/pss/uss/mapped per process and kind
    snap = memtrack.categorize(snap)            # GL, GRAPHICS, MULTIMEDIA, CAMERA, OTHER...

Importing it reads no command line, environment or user id and starts no thread: the CLI's
own start-up is in memtrack.cli.console.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import MemtrackError, SourceError  # noqa: E402
from .model import Snapshot, Buffer, Ref, Process  # noqa: E402
from .account import account  # noqa: E402

BACKENDS = ("auto", "procfs", "bpf")


def open_source(path=None):
    from .sources import open_source as _open
    return _open(path)


def scan(path=None, pids=None, smaps=False, backend="auto"):
    """Scan a live machine (path None), a directory tree or a capture archive. backend:
    "procfs" reads /proc text, "bpf" kernel iterators (root, libbpf, BTF: else
    BpfUnavailable), "auto" bpf where it can run on this machine, else procfs. The snapshot
    says which ran and why (backend, backend_reason). A path is always read as files."""
    from .backends import scan_source
    from .sources import open_source as _open
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    src = _open(path)
    try:
        if isinstance(src, Snapshot):
            return src
        return scan_source(src, backend, pids=pids, smaps=smaps)
    finally:
        close = getattr(src, "close", None)
        if close:
            close()


def categorize(snap, rules=None):
    """snap with each buffer's category set, by the shipped rules plus the user's
    ($XDG_CONFIG_HOME/memtrack/rules.toml), or by the rules file `rules` (as --rules)."""
    from .categories import categorize as _categorize, load_rules
    return _categorize(snap, load_rules(rules))


def load(path):
    """Read a JSON snapshot written by ``memtrack --json``."""
    from .sources.snapshot_file import load_snapshot
    return load_snapshot(path)


__all__ = ["scan", "load", "account", "categorize", "open_source", "Snapshot", "Buffer", "Ref", "Process",
           "MemtrackError", "SourceError", "BACKENDS", "__version__"]
