"""Buffers of 8 MiB with 1 MiB of them written, held by two processes (this one and a forked
child): a memfd, a /dev/shm file, a SysV segment and a shared anonymous mapping. Their size
is 8 MiB, the memory they hold 1 MiB. Prints one JSON line when ready (pids, identities);
exits, cleaning up, when stdin closes."""
import ctypes
import json
import mmap
import os
import sys

SIZE, WRITTEN = 8 << 20, 1 << 20
with open("/proc/self/comm", "w") as f:
    f.write("mt-sparse")
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]

mfd = os.memfd_create("sparse pool")
os.ftruncate(mfd, SIZE)
os.pwrite(mfd, b"m" * WRITTEN, 0)                   # through the fd: no mapping at all
path = "/dev/shm/memtrack-sparse-%d" % os.getpid()
sfd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
os.ftruncate(sfd, SIZE)
os.pwrite(sfd, b"s" * WRITTEN, 2 << 20)             # in the middle: a hole before it
shmid = libc.shmget(0, SIZE, 0o1600)                # IPC_PRIVATE, IPC_CREAT | 0600
if shmid < 0:
    sys.exit("shmget failed: errno %d" % ctypes.get_errno())
addr = libc.shmat(shmid, None, 0)
ctypes.memset(addr, 0x5a, WRITTEN)                  # touch 1 MiB of the segment
anon = mmap.mmap(-1, SIZE, flags=mmap.MAP_SHARED)   # shared anonymous: /dev/zero (deleted)
anon[:WRITTEN] = b"a" * WRITTEN
r, w = os.pipe()
child = os.fork()                                   # inherits the fds, the mappings, the attach
if child == 0:
    os.close(w)
    os.read(r, 1)                                   # until the parent exits
    os._exit(0)
os.close(r)
print(json.dumps({"parent": os.getpid(), "child": child, "shmid": shmid, "shm_path": path,
                  "memfd_ino": os.fstat(mfd).st_ino, "shm_ino": os.fstat(sfd).st_ino,
                  "size": SIZE, "written": WRITTEN}), flush=True)
try:
    sys.stdin.readline()
finally:
    libc.shmctl(shmid, 0, None)                     # IPC_RMID: freed once both detach
    os.unlink(path)
