"""memtrack: per-process accounting of shared buffers from interfaces the kernel already has.

Public API::

    import memtrack
    snap = memtrack.scan()                      # this machine
    snap = memtrack.scan("capture.tar.gz")      # a capture archive or a directory tree
    snap = memtrack.load("snapshot.json")       # a saved JSON snapshot
    acct = memtrack.account(snap)               # rss/pss/uss/mapped per process and kind
    snap = memtrack.categorize(snap)            # GL, GRAPHICS, MULTIMEDIA, CAMERA, OTHER...
"""
from __future__ import annotations

__version__ = "0.1.0"

# The CLI, as root, about to scan: load the BPF object while the rest is imported (_preload).
from ._preload import early as _early  # noqa: E402
_early()
del _early
from .errors import MemtrackError, SourceError  # noqa: E402
from .model import Snapshot, Buffer, Ref, Process  # noqa: E402
from .account import account  # noqa: E402


def open_source(path=None):
    from .sources import open_source as _open
    return _open(path)


def scan(path=None, pids=None, smaps=False):
    """Scan a live machine (path None), a directory tree or a capture archive."""
    from .procfs import scan as _scan
    from .sources import open_source as _open
    src = _open(path)
    try:
        if isinstance(src, Snapshot):
            return src
        return _scan(src, pids=pids, smaps=smaps)
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
           "MemtrackError", "SourceError", "__version__"]
