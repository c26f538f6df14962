"""Sources: the only code that touches files. One interface over a live /proc + /sys,
a directory laid out like them, and a capture archive read member by member."""
from __future__ import annotations

import errno
import os
import stat

from ..errors import SourceError


#: --root - reads stdin
STDIN = "-"
#: the most a pipe is read for a JSON snapshot (an archive streams)
MAX_PIPED = 1 << 30
#: the most of the capture script's stream format read, from a file or a pipe: it is held
#: whole and split into its files (about twice its size), within the 1 GiB cap of archives
MAX_STREAM_FORMAT = 384 << 20


def open_source(path=None, saved_filter=None):
    """A Source for path (None = this machine), or a Snapshot for a saved JSON file.
    saved_filter: a dict to receive the selection a JSON snapshot was saved under (its
    "filter": {"pids": [...], "kinds": [...]}, empty when it holds everything).
    A pipe (`<(ssh host memtrack --json)`, /dev/stdin, `-`) is read once, as it comes."""
    if path is None:
        from .live import LiveSource
        return LiveSource()
    path = os.fspath(path)
    if path == STDIN:
        return _open_pipe(os.dup(0), "stdin", saved_filter)
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
    if is_pipe(st):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(f"{path}: {exc.strerror or exc}") from None
        return _open_pipe(fd, path, saved_filter)
    if not stat.S_ISREG(st.st_mode):
        # a named FIFO would block until someone writes it, a device might never end: only
        # files, directories and pipes (which always had a writer) are sources
        raise SourceError(f"{path}: not a regular file, a directory or a pipe")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror}") from None
    if head.lstrip()[:1] == b"{":
        from .snapshot_file import load_snapshot
        return load_snapshot(path, saved_filter)
    if head.startswith(b"memtrack-stream "):       # the sh capture script's own format
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_STREAM_FORMAT:
                raise SourceError(f"{path}: a capture stream of more than "
                                  f"{MAX_STREAM_FORMAT >> 20} MiB, refusing")
            data = f.read()
        return _stream_source(path, data)
    from .archive import ArchiveSource, looks_like_archive
    if looks_like_archive(path, head):
        return ArchiveSource(path)
    raise SourceError(f"{path}: not a capture archive, a /proc-like directory or a JSON snapshot")


_PIPE_DEV = None


def is_pipe(st) -> bool:
    """An anonymous pipe (process substitution, a shell |), or a socket: never a named FIFO,
    whose open() waits for a writer that may never come. A pipe lives on pipefs: its
    st_dev is that of any pipe."""
    global _PIPE_DEV
    if stat.S_ISSOCK(st.st_mode):
        return True
    if not stat.S_ISFIFO(st.st_mode):
        return False
    if _PIPE_DEV is None:
        r, w = os.pipe()
        try:
            _PIPE_DEV = os.fstat(r).st_dev
        finally:
            os.close(r)
            os.close(w)
    return st.st_dev == _PIPE_DEV


def is_stream(path) -> bool:
    """Whether --root path can be read only once (stdin, a pipe)."""
    if path is None:
        return False
    if os.fspath(path) == STDIN:
        return True
    try:
        return is_pipe(os.stat(path))
    except OSError:
        return False


class _Piped:
    """A pipe read once, front to back: its first bytes (read to tell what it holds) and
    then the rest, through read(n) only (archives stream through it)."""

    def __init__(self, f, head: bytes):
        self.f, self.head = f, head

    def read(self, n=-1):
        if self.head:
            if n is None or n < 0:
                out, self.head = self.head + self.f.read(), b""
                return out
            out, self.head = self.head[:n], self.head[n:]
            return out
        return self.f.read(n)

    def read_all(self, cap: int, name: str) -> bytes:
        # in pieces: one read(cap) would reserve the whole cap at once
        parts, n = [self.head], len(self.head)
        self.head = b""
        while n <= cap:
            chunk = self.f.read(1 << 20)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
            n += len(chunk)
        raise SourceError(f"{name}: more than {cap >> 20} MiB from a pipe, refusing")

    def close(self):
        self.f.close()


def _open_pipe(fd: int, name: str, saved_filter=None):
    if name == "stdin" and os.isatty(fd):
        os.close(fd)
        raise SourceError("stdin is a terminal: pipe a capture or a JSON snapshot into it")
    f = os.fdopen(fd, "rb")
    keep = False
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
            raise SourceError(f"{name}: not a regular file or a pipe")
        head = b""
        while len(head) < 512:          # a pipe gives what was written so far: read on
            chunk = f.read1(512 - len(head))
            if not chunk:
                break
            head += chunk
        piped = _Piped(f, head)
        if head.lstrip()[:1] == b"{":
            from .snapshot_file import MAX_SNAPSHOT, load_snapshot
            return load_snapshot(name, saved_filter, data=piped.read_all(MAX_SNAPSHOT, name))
        if head.startswith(b"memtrack-stream "):
            return _stream_source(name, piped.read_all(MAX_STREAM_FORMAT, name))
        from .archive import ArchiveSource, looks_like_archive
        if looks_like_archive(name, head):
            keep = True
            return ArchiveSource(name, fileobj=piped)
        raise SourceError(f"{name}: not a capture archive or a JSON snapshot" if head else f"{name}: empty")
    except OSError as exc:
        raise SourceError(f"{name}: {exc.strerror or exc}") from None
    finally:
        if not keep:
            f.close()


def _stream_source(path: str, data: bytes):
    from .stream import TreeSource, parse_stream
    try:
        tree = parse_stream(data)
    except SourceError as exc:
        raise SourceError(f"{path}: {exc}") from None
    return TreeSource(tree, f"archive:{path}")
