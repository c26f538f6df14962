"""A process holding one of each shared buffer kind memtrack can make on a plain Linux box,
plus a forked child sharing them all. Prints `pid child shmid` when ready, exits (cleaning
up the SysV segment and the /dev/shm file) when stdin closes or gives a line.
argv[1] (optional): a tag put in the buffer names and the cmdline (binary-safety tests);
$MT_HOLDER_COMM (optional): its comm, "mt-holder" by default."""
import ctypes
import mmap
import os
import sys

tag = sys.argv[1] if len(sys.argv) > 1 else "plain"
with open("/proc/self/comm", "w") as f:              # a name no other process has
    f.write(os.environ.get("MT_HOLDER_COMM", "mt-holder"))
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]

fd = os.memfd_create("pool " + tag)                 # fd + map
os.ftruncate(fd, 3 << 20)
m1 = mmap.mmap(fd, 1 << 20)                          # a partial map: VMA != size
fdonly = os.memfd_create("fd-only " + tag)          # fd only: the size is in fdstat alone
os.ftruncate(fdonly, 7 << 20)
name = "/dev/shm/memtrack-test-%d" % os.getpid()
sfd = os.open(name, os.O_CREAT | os.O_RDWR, 0o600)
os.ftruncate(sfd, 2 << 20)
m2 = mmap.mmap(sfd, 2 << 20)
shmid = libc.shmget(0, 5 << 20, 0o1600)             # IPC_PRIVATE, IPC_CREAT | 0600
if shmid < 0:
    sys.exit("shmget failed: errno %d" % ctypes.get_errno())
addr = libc.shmat(shmid, None, 0)
anon = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_SHARED)   # shared anonymous: /dev/zero (deleted)
mo = os.memfd_create("map-only " + tag)             # map only: the size is in mapstat alone
os.ftruncate(mo, 6 << 20)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
if libc.mmap(None, 6 << 20, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, mo, 0) in (None, ctypes.c_void_p(-1).value):
    sys.exit("mmap failed")
os.close(mo)                                         # (mmap.mmap would keep a dup of the fd)
m1[:4096] = b"x" * 4096                             # resident pages, for in_rss (--smaps)
m2[:4096] = b"y" * 4096
anon[:8192] = b"z" * 8192
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(w)
    os.read(r, 1)                                    # until the parent exits
    os._exit(0)
os.close(r)
print(os.getpid(), child, shmid, flush=True)
try:
    sys.stdin.readline()
finally:
    libc.shmctl(shmid, 0, None)                      # IPC_RMID: freed once both detach
    os.unlink(name)
