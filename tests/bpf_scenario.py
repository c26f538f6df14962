"""A live scenario for the backend comparison: one process tree holding every kind of
buffer in every way (fd only, mapped, dup'd, inherited by fork, passed by SCM_RIGHTS,
map-only after close, long names, names with spaces, unlinked /dev/shm files).

Run as `python3 bpf_scenario.py`: prints `ready PID...` once everything is in place, then
waits until stdin closes; the caller kills the process group."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
PROT_RW, MAP_SHARED, MAP_ANON = 3, 1, 0x20
PAGE = os.sysconf("SC_PAGE_SIZE")


def mmap(fd, length, offset=0, anon=False):
    addr = libc.mmap(None, length, PROT_RW, MAP_SHARED | (MAP_ANON if anon else 0), fd, offset)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    ctypes.memset(addr, 1, length)            # resident, for --smaps
    return addr


def die_with_parent():
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)    # PR_SET_PDEATHSIG


def memfd(name, size):
    fd = os.memfd_create(name)
    os.ftruncate(fd, size)
    return fd


def main():
    tag = "memtrack-bpf-test-%d" % os.getpid()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    receiver = os.fork()
    if receiver == 0:                         # unrelated to the buffers until it receives one
        die_with_parent()
        a.close()
        _msg, fds, _flags, _addr = socket.recv_fds(b, 16, 4)
        mmap(fds[0], 2 * PAGE)
        b.send(b"k")
        signal.pause()
        os._exit(0)
    b.close()
    keep = []
    keep.append(memfd("fd only with spaces", 3 * PAGE))
    m = memfd("mapped", 4 * PAGE)
    mmap(m, 4 * PAGE)
    keep.append(os.dup(m))
    c = memfd("map-only", 2 * PAGE)
    mmap(c, PAGE, offset=PAGE)                # partial mapping at an offset
    os.close(c)
    long_fd = memfd("L" * 90, 5 * PAGE)       # longer than the iterator's 64-byte name field
    mmap(long_fd, PAGE)
    long_map = memfd("M" * 80, 6 * PAGE)
    mmap(long_map, 2 * PAGE)
    os.close(long_map)
    shm_path = "/dev/shm/" + tag
    s = os.open(shm_path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(s, 7 * PAGE)
    mmap(s, 7 * PAGE)
    gone = os.open(shm_path + "-unlinked", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(gone, 2 * PAGE)
    os.unlink(shm_path + "-unlinked")
    shm_maponly = os.open(shm_path + "-maponly", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(shm_maponly, 3 * PAGE)
    mmap(shm_maponly, 3 * PAGE)
    os.close(shm_maponly)
    shmid = libc.shmget(0, 5 * PAGE, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
    if shmid < 0:
        raise OSError(ctypes.get_errno(), "shmget")
    addr = libc.shmat(shmid, None, 0)
    ctypes.memset(addr, 1, 5 * PAGE)
    libc.shmctl(shmid, 0, None)               # IPC_RMID: gone once the last process detaches
    mmap(-1, 4 * PAGE, anon=True)             # shared anonymous: /dev/zero (deleted)
    passed = memfd("passed", 8 * PAGE)
    socket.send_fds(a, [b"x"], [passed])
    a.recv(1)
    child = os.fork()                         # inherits every fd and mapping
    if child == 0:
        die_with_parent()
        os.close(keep[0])                     # ... but drops one fd
        signal.pause()
        os._exit(0)
    os.unlink(shm_path)
    os.unlink(shm_path + "-maponly")
    print("ready", os.getpid(), child, receiver, flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
