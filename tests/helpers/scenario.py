"""A live scenario of shared buffers passed by fork, dup and SCM_RIGHTS.

Run as a program: builds the processes, prints one JSON line (pids, inodes, shm path), then
keeps everything alive until stdin closes. Mappings are made with libc mmap through ctypes,
not Python's mmap module, because mmap.mmap() dups the fd and would add references.

  P (this process)  memfd "pool one" (2 fds), /dev/shm file (fd + map), shared anonymous map,
                    SysV segment (attached), memfd "map only" (mapped, fd closed)
  C1 (fork of P)    inherits; keeps one fd of "pool one", the shm fd (unmapped), the shared
                    anonymous and "map only" maps; detaches SysV; opens memfd "c1 private"
  C2 (fork of P)    drops everything inherited; receives memfd "pipewire buffer" twice over
                    SCM_RIGHTS and maps 8 KiB of it at offset 4 KiB
"""
import array
import ctypes
import ctypes.util
import json
import os
import socket
import sys

SIZES = {"pool": 12388, "shm": 131072, "anon": 65536, "sysv": 98304, "maponly": 40960,
         "c1": 8192, "pw": 1048577}
PAGE = 4096
PROT_RW = 0x1 | 0x2
MAP_SHARED, MAP_ANON = 0x01, 0x20
IPC_PRIVATE, IPC_CREAT, IPC_RMID = 0, 0o1000, 0

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]


def mmap(fd, length, offset=0, flags=MAP_SHARED):
    addr = libc.mmap(None, length, PROT_RW, flags, fd, offset)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap failed")
    return addr


def touch(addr, nbytes):
    for off in range(0, nbytes, PAGE):
        ctypes.c_char.from_address(addr + off).value = b"x"


def wait_stdin():
    try:
        sys.stdin.buffer.read()
    except KeyboardInterrupt:
        pass


def main():
    out = {}
    pool = os.memfd_create("pool one", 0)
    os.ftruncate(pool, SIZES["pool"])
    pool2 = os.dup(pool)
    shm_path = f"/dev/shm/memtrack-test-{os.getpid()}"
    shm = os.open(shm_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(shm, SIZES["shm"])
    shm_addr = mmap(shm, SIZES["shm"])
    touch(shm_addr, PAGE)
    anon = mmap(-1, SIZES["anon"], flags=MAP_SHARED | MAP_ANON)
    touch(anon, 2 * PAGE)
    shmid = libc.shmget(IPC_PRIVATE, SIZES["sysv"], IPC_CREAT | 0o600)
    if shmid < 0:
        raise OSError(ctypes.get_errno(), "shmget")
    sysv = libc.shmat(shmid, None, 0)
    touch(sysv, PAGE)
    libc.shmctl(shmid, IPC_RMID, None)     # removed once the last process detaches
    maponly = os.memfd_create("map only", 0)
    os.ftruncate(maponly, SIZES["maponly"])
    maponly_addr = mmap(maponly, SIZES["maponly"])
    out["maponly_ino"] = os.fstat(maponly).st_ino
    os.close(maponly)
    out["pool_ino"] = os.fstat(pool).st_ino
    out["shm_ino"] = os.fstat(shm).st_ino
    out["shmid"] = shmid
    sp_parent, sp_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ready_r, ready_w = os.pipe()

    c1 = os.fork()
    if c1 == 0:
        os.close(pool2)
        libc.munmap(shm_addr, SIZES["shm"])
        libc.shmdt(sysv)
        private = os.memfd_create("c1 private", 0)
        os.ftruncate(private, SIZES["c1"])
        os.write(ready_w, b"%d\n" % os.fstat(private).st_ino)
        wait_stdin()
        os._exit(0)

    c2 = os.fork()
    if c2 == 0:
        for fd in (pool, pool2, shm):
            os.close(fd)
        for addr, n in ((shm_addr, SIZES["shm"]), (anon, SIZES["anon"]), (maponly_addr, SIZES["maponly"])):
            libc.munmap(addr, n)
        libc.shmdt(sysv)
        got = []
        while len(got) < 2:
            msg, anc, _flags, _addr = sp_child.recvmsg(16, socket.CMSG_SPACE(8 * 4))
            for level, typ, data in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                    got.extend(fds)
        addr = mmap(got[0], 2 * PAGE, offset=PAGE)
        touch(addr, PAGE)
        os.write(ready_w, b"c2\n")
        wait_stdin()
        os._exit(0)

    pw = os.memfd_create("pipewire buffer", 0)
    os.ftruncate(pw, SIZES["pw"])
    out["pw_ino"] = os.fstat(pw).st_ino
    for _ in range(2):
        sp_parent.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pw]))])
    os.close(pw)
    lines = b""
    while lines.count(b"\n") < 2:
        lines += os.read(ready_r, 100)
    c1_ino = [int(x) for x in lines.split() if x.isdigit()]
    out.update(parent=os.getpid(), c1=c1, c2=c2, c1_ino=c1_ino[0], shm_path=shm_path, sizes=SIZES)
    print(json.dumps(out), flush=True)
    try:
        wait_stdin()
    finally:
        os.unlink(shm_path)
        for c in (c1, c2):
            try:
                os.kill(c, 9)
                os.waitpid(c, 0)
            except OSError:
                pass


if __name__ == "__main__":
    main()
