"""Sources: the only code that touches files. One interface over a live /proc + /sys,
a directory laid out like them, and a capture archive read member by member."""
from __future__ import annotations

import os

from ..errors import SourceError


def open_source(path=None):
    """A Source for path (None = this machine), or a Snapshot for a saved JSON file."""
    if path is None:
        from .live import LiveSource
        return LiveSource()
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.realpath(path) == "/":
        from .live import LiveSource          # --root / is this machine, with stat and map_files
        return LiveSource()
    if os.path.isdir(path):
        from .tree import DirSource
        return DirSource(path)
    if not os.path.exists(path):
        raise SourceError(f"{path}: no such file or directory")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror}") from None
    if head.lstrip()[:1] == b"{":
        from .snapshot_file import load_snapshot
        return load_snapshot(path)
    from .archive import ArchiveSource, looks_like_archive
    if looks_like_archive(path, head):
        return ArchiveSource(path)
    raise SourceError(f"{path}: not a capture archive, a /proc-like directory or a JSON snapshot")
