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
is refused (EACCES), though renaming over it in a writable directory would succeed.

Planted links (root writing to /tmp/x.json that a user made a link to /etc/shadow): the
path is walked one component at a time, as the kernel walks it, and a symlink is followed
only where fs.protected_symlinks=1 would follow it, whatever the sysctl says: not one in a
sticky world-writable directory (/tmp) owned neither by the caller nor by the directory's
owner. Likewise fs.protected_regular=1 and protected_fifos=1: an existing target in such a
directory owned by neither is refused (renaming over it would hand the new contents to its
owner: the replaced file's owner and mode are kept), and so is a device node there (a hard
link to a root device is owned by root). The walk holds each directory open (O_PATH), and
the temp file is created (O_EXCL|O_NOFOLLOW) and renamed relative to the directory it
checked: what was checked is what is written, whatever is renamed meanwhile. Hard links
need no rule for regular files: the rename replaces the name, never the linked inode."""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import NamedTuple, Optional

_MAX_LINKS = 40                         # the kernel's MAXSYMLINKS: beyond it, ELOOP
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


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


def umask() -> int:
    """The process's umask now. Where /proc does not tell (Linux < 4.7) it is read by setting
    it and setting it back, the only other way, on each call: nothing is done at import.
    The writer itself does not need it (the kernel applies it to the file it creates)."""
    mask = _proc_umask()
    if mask is None:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


class Target(NamedTuple):
    """Where a path leads once its links are followed: dir_fd (O_PATH, the caller closes it),
    the final name in it, its lstat (None: no such file), the directory's fstat, and how
    messages name the directory."""
    dir_fd: int
    name: str
    st: Optional[os.stat_result]
    dir_st: os.stat_result
    shown_dir: str

    @property
    def shown(self) -> str:
        return os.path.join(self.shown_dir, self.name)


def _sticky_open(dst: os.stat_result) -> bool:
    """A sticky, world-writable directory (/tmp): anyone may plant a name there."""
    return dst.st_mode & (stat.S_ISVTX | stat.S_IWOTH) == (stat.S_ISVTX | stat.S_IWOTH)


def _trusted(st: os.stat_result, dst: os.stat_result) -> bool:
    """The kernel's test (may_follow_link, may_create_in_sticky): an entry of a sticky
    world-writable directory is trusted if the caller or the directory's owner owns it."""
    return not _sticky_open(dst) or st.st_uid in (os.geteuid(), dst.st_uid)


def _refuse(what: str, shown: str, st: os.stat_result) -> PermissionError:
    return PermissionError(errno.EACCES, f"refusing to {what} {shown}: it is owned by uid {st.st_uid}, "
                           "neither this user nor the owner of its sticky world-writable directory")


def check_entry(t: Target, name: str, st: os.stat_result) -> None:
    """Refuse an existing entry of t's directory that the kernel's protected_* rules would
    not let the caller follow or open for writing there."""
    shown = os.path.join(t.shown_dir, name)
    if stat.S_ISLNK(st.st_mode):
        if not _trusted(st, t.dir_st):
            raise _refuse("follow the symlink", shown, st)
    elif not _trusted(st, t.dir_st):
        raise _refuse("write", shown, st)
    elif _sticky_open(t.dir_st) and (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise PermissionError(errno.EACCES, f"refusing to write {shown}: a device node in a sticky "
                              "world-writable directory (a hard link to any device is owned by root)")


def resolve(path: str) -> Target:
    """Walk path as the kernel would for an open(O_CREAT) of it, following only the links
    that protected_symlinks=1 lets the caller follow (PermissionError for another). The
    final name is not a link (it may not exist); its directory is held open."""
    if not path:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    if path.endswith("/"):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    shown = "/" if path.startswith("/") else os.getcwd()
    cur = os.open("/" if path.startswith("/") else ".", _DIR)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    links = 0
    try:
        while True:
            if not parts:                       # "/", "." or a link to one: a directory
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            name = parts.pop(0)
            dst = os.fstat(cur)
            if name == "..":
                nxt = os.open("..", _DIR, dir_fd=cur)
                os.close(cur)
                cur, shown = nxt, os.path.dirname(shown)
                continue
            try:
                st = os.stat(name, dir_fd=cur, follow_symlinks=False)
            except FileNotFoundError:
                if parts:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT),
                                            os.path.join(shown, name)) from None
                st = None
            t = Target(cur, name, st, dst, shown)
            if st is not None and stat.S_ISLNK(st.st_mode):
                check_entry(t, name, st)
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                dest = os.readlink(name, dir_fd=cur)
                if dest.startswith("/"):
                    nxt = os.open("/", _DIR)
                    os.close(cur)
                    cur, shown = nxt, "/"
                parts[:0] = [p for p in dest.split("/") if p not in ("", ".")]
                if dest.endswith("/") and not parts:
                    raise IsADirectoryError(errno.EISDIR, "is a directory", path)
                continue
            if not parts:
                if st is not None:
                    if stat.S_ISDIR(st.st_mode):
                        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
                    check_entry(t, name, st)
                cur = -1                        # handed to the caller
                return t
            # O_NOFOLLOW: a directory swapped for a link since the lstat fails (ELOOP/ENOTDIR)
            nxt = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=cur)
            os.close(cur)
            cur, shown = nxt, os.path.join(shown, name)
    finally:
        if cur >= 0:
            os.close(cur)


def _writable(t: Target) -> bool:
    kw = {"effective_ids": True} if os.access in os.supports_effective_ids else {}
    return os.access(t.name, os.W_OK, dir_fd=t.dir_fd, follow_symlinks=False, **kw)


@contextlib.contextmanager
def atomic_open(path: str, mode: int = 0o666):
    """with atomic_open(path) as f: f.write(b"...")  -- binary file object; renamed on success.
    An existing file keeps its permission bits; a new one gets `mode` less the umask."""
    t = resolve(path)
    try:
        yield from _write(t, mode)
    finally:
        os.close(t.dir_fd)


def _write(t: Target, mode: int):
    st, d = t.st, t.dir_fd
    if st is not None and not stat.S_ISREG(st.st_mode):
        # a device, a FIFO: write to it, replace nothing (O_NOFOLLOW: no link swapped in)
        fd = os.open(t.name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=d)
        with os.fdopen(fd, "wb") as f:
            yield f
        return
    if st is not None and not _writable(t):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), t.shown)
    prefix = _temp_prefix(t.name)
    _sweep(d, prefix)
    # a new file is created with its final mode, which the kernel lessens by the umask (as
    # for a shell's `>`); a replacement is private until it has the old file's owner and mode
    fd, tmp = _create_temp(d, prefix, 0o600 if st is not None else mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            if st is not None:
                # the replaced file's owner and group where the caller may give them (root
                # may, a user may give a group it is in); before chmod: chown clears set-id bits
                for uid, gid in ((st.st_uid, st.st_gid), (-1, st.st_gid)):
                    try:
                        os.fchown(f.fileno(), uid, gid)
                        break
                    except OSError:
                        pass
                os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode))
        os.replace(tmp, t.name, src_dir_fd=d, dst_dir_fd=d)
        with contextlib.suppress(OSError):
            dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=d)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=d)
        raise


def _create_temp(d: int, prefix: str, mode: int):
    """(fd, name): a new file in directory fd d, O_EXCL|O_NOFOLLOW (never an existing file or
    a planted link)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        name = "%s%d.%s.tmp" % (prefix, os.getpid(), os.urandom(6).hex())
        try:
            return os.open(name, flags, mode, dir_fd=d), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", prefix)


def _temp_prefix(path: str) -> str:
    """".NAME.HOST." : the writer's pid and a random part follow, then ".tmp"."""
    host = os.uname().nodename.replace("/", "_").replace(".", "_") or "host"
    return ".%s.%s." % (os.path.basename(path), host)


def _sweep(d: int, prefix: str) -> None:
    """Remove the temp files of earlier writers of this target on this host that were
    killed before they could (SIGKILL, a crash): those whose pid no longer runs. A live pid
    (even a reused one) keeps its file; other hosts' files (a shared directory) are theirs."""
    try:
        rfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=d)
        try:
            names = [n for n in os.listdir(rfd) if n.startswith(prefix) and n.endswith(".tmp")]
        finally:
            os.close(rfd)
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
            os.unlink(name, dir_fd=d)


def atomic_write(path: str, data: bytes, mode: int = 0o666) -> None:
    with atomic_open(path, mode) as f:
        f.write(data)
