"""Sources: the only code that touches files. One interface over a live /proc + /sys,
a directory laid out like them, and a capture archive read member by member."""
from __future__ import annotations

import errno
import os
import stat

from ..errors import SourceError


def open_source(path=None, saved_filter=None):
    """A Source for path (None = this machine), or a Snapshot for a saved JSON file.
    saved_filter: a dict to receive the selection a JSON snapshot was saved under (its
    "filter": {"pids": [...], "kinds": [...]}, empty when it holds everything)."""
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
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise SourceError(f"{path}: no such file or directory") from None
        raise SourceError(f"{path}: {exc.strerror or 'cannot stat'}") from None
    if not stat.S_ISREG(st.st_mode):
        # a FIFO or a device would block or never end: only files and directories are sources
        raise SourceError(f"{path}: not a regular file or a directory")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror}") from None
    if head.lstrip()[:1] == b"{":
        from .snapshot_file import load_snapshot
        return load_snapshot(path, saved_filter)
    if head.startswith(b"memtrack-stream "):       # the sh capture script's own format
        from ..remote import TreeSource, parse_stream
        with open(path, "rb") as f:
            data = f.read()
        try:
            tree = parse_stream(data)
        except SourceError as exc:
            raise SourceError(f"{path}: {exc}") from None
        return TreeSource(tree, f"archive:{path}")
    from .archive import ArchiveSource, looks_like_archive
    if looks_like_archive(path, head):
        return ArchiveSource(path)
    raise SourceError(f"{path}: not a capture archive, a /proc-like directory or a JSON snapshot")
