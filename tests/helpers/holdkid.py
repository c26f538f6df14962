"""Processes holding buffers in the ways memtrack once missed (issue 14, part 2).

Run as `python3 holdkid.py CASE [ARG]`: sets CASE up, prints `ready PID...` (the pids whose
holdings the test checks), then waits until stdin closes. The caller kills the group.

  huge      MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB (/anon_hugepage (deleted)), 2 huge pages,
            one touched, shared with a forked child; an MFD_HUGETLB memfd, fd + map
  hugefs    a file on a hugetlbfs mounted (private mount namespace) on ARG, fd + map
  private   MAP_PRIVATE of a memfd and of a /dev/shm file (ARG: its path), fds closed, one
            page of each written (copy on write)
  fexec     a child running `sleep` from a memfd (fexecve): the memfd mapped privately only
  exited    the main thread exits (SYS_exit) while a thread holds a memfd and a mapping
  ownfiles  a thread unshares its fd table (CLONE_FILES), then opens a memfd only it holds
  bind      /dev/shm/NAME (ARG2) held by fd and map by this process and by a child that, in
            a private mount namespace, bind-mounts /dev/shm on ARG and opens ARG/NAME
"""
import ctypes
import mmap
import os
import sys
import threading

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.syscall.restype = ctypes.c_long
MAP_SHARED, MAP_PRIVATE, MAP_ANON, MAP_HUGETLB = 1, 2, 0x20, 0x40000
PROT_RW = 3
HUGE = 2 << 20
PAGE = mmap.PAGESIZE
CLONE_FILES, CLONE_NEWNS = 0x400, 0x20000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
SYS_exit = {"x86_64": 60, "aarch64": 93}.get(os.uname().machine, 60)


def mm(length, flags, fd=-1, touch=0):
    addr = libc.mmap(None, length, PROT_RW, flags, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    if touch:
        ctypes.memset(addr, 7, touch)
    return addr


def ready(*pids):
    print("ready", *pids, flush=True)


def wait_stdin():
    sys.stdin.readline()


def huge():
    mm(2 * HUGE, MAP_SHARED | MAP_ANON | MAP_HUGETLB, touch=PAGE)
    fd = os.memfd_create("huge-memfd", os.MFD_HUGETLB)
    os.ftruncate(fd, HUGE)
    mm(HUGE, MAP_SHARED, fd, touch=PAGE)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    ready(os.getpid(), child)
    wait_stdin()


def private(path):
    fd = os.memfd_create("private-memfd")
    os.ftruncate(fd, 4 * PAGE)
    mm(4 * PAGE, MAP_PRIVATE, fd, touch=PAGE)
    os.close(fd)
    sfd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(sfd, 3 * PAGE)
    mm(3 * PAGE, MAP_PRIVATE, sfd, touch=PAGE)
    os.close(sfd)
    ready(os.getpid())
    wait_stdin()


def hugefs(where):
    """In a mount namespace of its own, a hugetlbfs mounted on ARG: one file there, 1 huge
    page, held by fd and a shared mapping."""
    _private_ns()
    if libc.mount(b"none", where.encode(), b"hugetlbfs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), "mount -t hugetlbfs")
    fd = os.open(os.path.join(where, "hugefile"), os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, HUGE)
    mm(HUGE, MAP_SHARED, fd, touch=PAGE)
    ready(os.getpid())
    wait_stdin()


def _private_ns():
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")


def fexec():
    import shutil
    fd = os.memfd_create("fexec-sleep")           # close-on-exec: only the mappings hold it
    with open(shutil.which("sleep"), "rb") as f:
        data = f.read()
    while data:
        data = data[os.write(fd, data):]
    child = os.fork()
    if child == 0:
        os.execve(fd, ["sleep", "1000"], {})
    os.close(fd)
    while True:                                     # until the exec is done
        try:
            if os.readlink("/proc/%d/exe" % child).startswith("/memfd:fexec-sleep"):
                break
        except OSError:
            pass
        threading.Event().wait(0.01)
    ready(child)
    wait_stdin()


def exited():
    fd = os.memfd_create("left-by-main")
    os.ftruncate(fd, 5 * PAGE)
    m = os.memfd_create("mapped-left-by-main")
    os.ftruncate(m, 6 * PAGE)
    mm(6 * PAGE, MAP_SHARED, m, touch=PAGE)
    os.close(m)
    me = os.getpid()

    def run():
        # ready only once the leader is gone: its /proc/PID/fd and maps are empty then
        while True:
            with open("/proc/%d/task/%d/status" % (me, me)) as f:
                if "\nState:\tZ" in f.read():
                    break
            threading.Event().wait(0.01)
        ready(me)
        wait_stdin()
        os._exit(0)

    threading.Thread(target=run).start()
    libc.syscall(SYS_exit, 0)           # the main thread alone ends; the thread runs on


def ownfiles():
    shared = os.memfd_create("in-both-tables")
    os.ftruncate(shared, 2 * PAGE)
    got = threading.Event()

    def run():
        if libc.unshare(CLONE_FILES) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        fd = os.memfd_create("thread-table-only")
        os.ftruncate(fd, 3 * PAGE)
        got.set()
        wait_stdin()
        os._exit(0)

    threading.Thread(target=run, daemon=True).start()
    got.wait()
    ready(os.getpid())
    threading.Event().wait()


def bind(where, name):
    """The parent holds /dev/shm/NAME; a child in a mount namespace of its own holds it
    through the bind mount."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        _bound(where, name, w)
        return
    os.close(w)
    os.read(r, 1)
    fd = os.open("/dev/shm/" + name, os.O_RDWR)
    mm(os.fstat(fd).st_size, MAP_SHARED, fd, touch=PAGE)
    ready(os.getpid(), child)
    wait_stdin()


def _bound(where, name, w):
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    if libc.mount(b"/dev/shm", where.encode(), None, MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --bind")
    fd = os.open(os.path.join(where, name), os.O_RDWR)
    mm(os.fstat(fd).st_size, MAP_SHARED, fd, touch=PAGE)
    os.write(w, b"k")
    threading.Event().wait()


if __name__ == "__main__":
    case = sys.argv[1]
    {"huge": huge, "hugefs": hugefs, "private": private, "fexec": fexec, "exited": exited, "ownfiles": ownfiles,
     "bind": bind}[case](*sys.argv[2:])
