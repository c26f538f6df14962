"""Naming a dma-buf at run time: DMA_BUF_SET_NAME on the buffer's fd (the kernel's
dma-buf naming ioctl). For another process's fd, pidfd_open + pidfd_getfd (Linux 5.6, ptrace rights) give
this process a duplicate of it; the name is the buffer's, so every holder sees it.

The only code outside sources/ that touches the system: it acts, it does not observe.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import struct

from .errors import MemtrackError
from .readers.fd import classify

DMA_BUF_NAME_LEN = 32                      # bytes, the terminating NUL included
DMA_BUF_SET_NAME_B = 0x40086201            # _IOW('b', 1, u64)
DMA_BUF_SET_NAME_A = 0x40046201            # _IOW('b', 1, u32): 32-bit userspace


class TagError(MemtrackError):
    """Naming failed: the message is the one line the user sees."""


def name_bytes(name: str) -> bytes:
    data = name.encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise TagError("a dma-buf name cannot contain a NUL byte")
    if len(data) + 1 > DMA_BUF_NAME_LEN:
        raise TagError(f"name is {len(data)} bytes: a dma-buf name holds at most {DMA_BUF_NAME_LEN - 1} "
                       f"bytes (DMA_BUF_NAME_LEN {DMA_BUF_NAME_LEN}, the NUL included)")
    return data


def syscall_numbers(machine: str = "", pointer_size: int = 0):
    """(pidfd_open, pidfd_getfd) for this architecture: 434/438 in the table every
    architecture shares since Linux 5.1, offset on those that keep their own."""
    machine = machine or platform.machine()
    pointer_size = pointer_size or struct.calcsize("P")
    if machine == "alpha":
        return 544, 548
    if machine.startswith("mips"):
        base = 5000 if pointer_size == 8 else 4000      # n64 / o32
        return base + 434, base + 438
    if machine == "ia64":
        return 1024 + 434, 1024 + 438
    return 434, 438


def _syscall(nr: int, *args) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    res = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    if res < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return res


def take_fd(pid: int, fd: int) -> int:
    """A duplicate, in this process, of fd `fd` of process `pid` (close it when done)."""
    open_nr, getfd_nr = syscall_numbers()
    try:
        pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else _syscall(open_nr, pid, 0)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise TagError(f"no process {pid}") from None
        if exc.errno == errno.ENOSYS:
            raise TagError("this kernel has no pidfd_open (Linux 5.3+): cannot reach another "
                           "process's fds; run tag inside that process") from None
        raise TagError(f"pidfd_open({pid}): {exc.strerror}") from None
    try:
        return _syscall(getfd_nr, pidfd, fd, 0)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise TagError(f"no rights to take fd {fd} of pid {pid}: pidfd_getfd needs ptrace access "
                           "(root or CAP_SYS_PTRACE, or the same user with kernel.yama.ptrace_scope 0)") from None
        if exc.errno == errno.EBADF:
            raise TagError(f"pid {pid} has no fd {fd}") from None
        if exc.errno == errno.ESRCH:
            raise TagError(f"pid {pid} exited") from None
        if exc.errno == errno.ENOSYS:
            raise TagError("this kernel has no pidfd_getfd (Linux 5.6+): cannot take another "
                           "process's fd") from None
        raise TagError(f"pidfd_getfd(pid {pid}, fd {fd}): {exc.strerror}") from None
    finally:
        os.close(pidfd)


def _target(pid: int, fd: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            if not os.path.exists(f"/proc/{pid}"):
                raise TagError(f"no process {pid}") from None
            raise TagError(f"pid {pid} has no fd {fd}") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise TagError(f"no rights to see the fds of pid {pid} (run as its owner or root)") from None
        raise TagError(f"/proc/{pid}/fd/{fd}: {exc.strerror}") from None


def set_name(fd: int, name: str) -> None:
    """DMA_BUF_SET_NAME on an fd of this process."""
    data = name_bytes(name)
    req = DMA_BUF_SET_NAME_B if struct.calcsize("P") == 8 else DMA_BUF_SET_NAME_A
    try:
        fcntl.ioctl(fd, req, data + b"\0")
    except OSError as exc:
        if exc.errno == errno.ENOTTY:
            raise TagError("this kernel cannot name dma-bufs (DMA_BUF_SET_NAME needs Linux 5.3), "
                           "or the fd is not a dma-buf") from None
        if exc.errno == errno.EBUSY:
            raise TagError("the buffer is attached to a device and this kernel only names "
                           "unattached buffers") from None
        if exc.errno == errno.EINVAL:
            raise TagError("the kernel refused the name (longer than its DMA_BUF_NAME_LEN?)") from None
        raise TagError(f"DMA_BUF_SET_NAME: {exc.strerror}") from None


def tag(pid: int, fd: int, name: str) -> str:
    """Name the dma-buf behind fd `fd` of process `pid`. Returns the fd's new link target."""
    name_bytes(name)                               # a bad name fails before touching anything
    target = _target(pid, fd)
    kind = classify(target)
    if kind is None or kind[0] != "dmabuf":
        raise TagError(f"fd {fd} of pid {pid} is not a dma-buf (it is {target})")
    if pid == os.getpid():
        set_name(fd, name)
        return _target(pid, fd)
    dup = take_fd(pid, fd)
    try:
        # the fd number may have been closed and reused since the readlink: same file?
        try:
            st, mine = os.stat(f"/proc/{pid}/fd/{fd}"), os.fstat(dup)
        except OSError as exc:
            raise TagError(f"fd {fd} of pid {pid}: {exc.strerror}") from None
        if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
            raise TagError(f"fd {fd} of pid {pid} changed while tagging: try again")
        set_name(dup, name)
    finally:
        os.close(dup)
    return _target(pid, fd)
