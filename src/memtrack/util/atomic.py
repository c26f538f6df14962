"""Atomic file replacement: write a temp file beside the target, fsync, rename. A reader (or
a crash at any point) sees the old file or the new one, never a half-written one.

The temp file is named .NAME.HOST.PID.*.tmp; a writer killed before its rename (SIGKILL)
leaves it behind, and the next writer of the same target removes it.

Only files are replaced. A symlink is followed (the file it names is replaced, the link
stays); a target that exists and is not a regular file (/dev/null, a FIFO, a terminal) is
written in place: renaming over it would put a plain file where a device node was.

Like a shell's `> FILE`: a new file gets 0666 less the umask (a umask of 077 keeps a capture
of every process's cmdline private); an existing file keeps its permission bits (and its
owner and group where the caller may give them); an existing file the caller may not write
is refused (EACCES), though renaming over it in a writable directory would succeed."""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile


def _proc_umask():
    """The umask from /proc/self/status (Linux >= 4.7): reading it changes nothing."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _set_and_restore_umask() -> int:
    """os.umask() can only be read by setting it, for the whole process: done once, at
    import (before any thread of ours could create a file meanwhile)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


_IMPORT_UMASK = _proc_umask()
if _IMPORT_UMASK is None:
    _IMPORT_UMASK = _set_and_restore_umask()


def umask() -> int:
    """The process's umask now (as of import where /proc does not tell)."""
    mask = _proc_umask()
    return _IMPORT_UMASK if mask is None else mask


def _writable(path: str) -> bool:
    if os.access in os.supports_effective_ids:
        return os.access(path, os.W_OK, effective_ids=True)
    return os.access(path, os.W_OK)


@contextlib.contextmanager
def atomic_open(path: str, mode: int = 0o666):
    """with atomic_open(path) as f: f.write(b"...")  -- binary file object; renamed on success.
    An existing file keeps its permission bits; a new one gets `mode` less the umask."""
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
        if not _writable(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        mode = stat.S_IMODE(st.st_mode)
    else:
        mode &= ~umask() & 0o7777
    d = os.path.dirname(path)
    prefix = _temp_prefix(path)
    _sweep(d, prefix)
    fd, tmp = tempfile.mkstemp(prefix=prefix + "%d." % os.getpid(), suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if st is not None:
            # the replaced file's owner and group where the caller may give them (root may,
            # a user may give a group it is in); before chmod: chown clears set-id bits
            for uid, gid in ((st.st_uid, st.st_gid), (-1, st.st_gid)):
                try:
                    os.chown(tmp, uid, gid)
                    break
                except OSError:
                    pass
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


def atomic_write(path: str, data: bytes, mode: int = 0o666) -> None:
    with atomic_open(path, mode) as f:
        f.write(data)
