"""Atomic file replacement: write a temp file beside the target, fsync, rename. A reader (or
a crash at any point) sees the old file or the new one, never a half-written one.

The temp file is named .NAME.HOST.PID.*.tmp; a writer killed before its rename (SIGKILL)
leaves it behind, and the next writer of the same target removes it.

Only files are replaced. A symlink is followed (the file it names is replaced, the link
stays); a target that exists and is not a regular file (/dev/null, a FIFO, a terminal) is
written in place: renaming over it would put a plain file where a device node was."""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile


@contextlib.contextmanager
def atomic_open(path: str, mode: int = 0o644):
    """with atomic_open(path) as f: f.write(b"...")  -- binary file object; renamed on success.
    An existing file keeps its permission bits; a new one gets `mode`."""
    path = os.path.realpath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{path} is a directory")
        with open(path, "wb") as f:         # a device, a FIFO: write to it, replace nothing
            yield f
        return
    if st is not None:
        mode = stat.S_IMODE(st.st_mode)
    d = os.path.dirname(path)
    prefix = _temp_prefix(path)
    _sweep(d, prefix)
    fd, tmp = tempfile.mkstemp(prefix=prefix + "%d." % os.getpid(), suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        try:
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _temp_prefix(path: str) -> str:
    """".NAME.HOST." : the writer's pid and a random part follow, then ".tmp"."""
    host = os.uname().nodename.replace("/", "_").replace(".", "_") or "host"
    return ".%s.%s." % (os.path.basename(path), host)


def _sweep(d: str, prefix: str) -> None:
    """Remove the temp files of earlier writers of this target on this host that were
    killed before they could (SIGKILL, a crash): those whose pid no longer runs. A live pid
    (even a reused one) keeps its file; other hosts' files (a shared directory) are theirs."""
    try:
        names = [n for n in os.listdir(d) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue                            # still running (or another process's now)
        except ProcessLookupError:
            pass
        except OSError:
            continue                            # EPERM: it runs, as someone else
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(d, name))


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    with atomic_open(path, mode) as f:
        f.write(data)
