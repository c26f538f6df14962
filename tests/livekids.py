"""Real child processes that hold shared buffers (memfds), driven line by line over a pipe.

    with Kid() as k:
        fd = k.add("pool", 65536)     # memfd_create + ftruncate, fd stays open
        k.map(fd)                     # mmap it MAP_SHARED and touch every page
        k.close(fd)
Each command returns only once the child has done it, so a scan right after sees it.
"""
from __future__ import annotations

import subprocess
import sys

CHILD = r"""
import ctypes, os, sys
# libc mmap, not Python's mmap module: that one keeps a dup() of the fd open
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
maps = {}
print("ready", os.getpid(), flush=True)
for line in sys.stdin:
    cmd, *a = line.split()
    if cmd == "add":
        fd = os.memfd_create(a[0], 0)
        os.ftruncate(fd, int(a[1]))
        print(fd, flush=True)
    elif cmd == "map":
        fd = int(a[0]); size = os.fstat(fd).st_size
        addr = libc.mmap(None, size, 3, 1, fd, 0)      # PROT_READ|PROT_WRITE, MAP_SHARED
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        for off in range(0, size, 4096):
            ctypes.memset(addr + off, 1, 1)
        maps.setdefault(fd, []).append((addr, size))
        print("ok", flush=True)
    elif cmd == "unmap":
        for addr, size in maps.pop(int(a[0]), []):
            libc.munmap(addr, size)
        print("ok", flush=True)
    elif cmd == "close":
        os.close(int(a[0]))
        print("ok", flush=True)
    elif cmd == "dup2":
        os.dup2(int(a[0]), int(a[1]))
        print("ok", flush=True)
    elif cmd == "quit":
        break
"""

# A process that leaks one memfd every PERIOD seconds, or (churn) creates and frees one.
LOOP = r"""
import os, sys, time
mode, period = sys.argv[1], float(sys.argv[2])
held = []
print("ready", os.getpid(), flush=True)
i = 0
while True:
    i += 1
    fd = os.memfd_create("%s-%d" % (mode, i), 0)
    os.ftruncate(fd, 65536)
    if mode == "leak":
        held.append(fd)
    else:
        time.sleep(period / 2)
        os.close(fd)
    time.sleep(period if mode == "leak" else period / 2)
"""


class Kid:
    def __init__(self, comm: str = "mt-kid"):
        self.p = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)
        line = self.p.stdout.readline().split()
        assert line[0] == "ready", line
        self.pid = int(line[1])

    def _cmd(self, text: str) -> str:
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def add(self, name: str, size: int) -> int:
        return int(self._cmd(f"add {name} {size}"))

    def map(self, fd: int) -> None:
        assert self._cmd(f"map {fd}") == "ok"

    def unmap(self, fd: int) -> None:
        assert self._cmd(f"unmap {fd}") == "ok"

    def close(self, fd: int) -> None:
        assert self._cmd(f"close {fd}") == "ok"

    def dup2(self, a: int, b: int) -> None:
        assert self._cmd(f"dup2 {a} {b}") == "ok"

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                self.p.stdin.write("quit\n")
                self.p.stdin.flush()
            except OSError:
                pass
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        for f in (self.p.stdin, self.p.stdout):
            try:
                f.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Loop:
    """mode "leak": one more 64 KiB memfd held every period; "churn": create, hold, free."""

    def __init__(self, mode: str, period: float):
        self.p = subprocess.Popen([sys.executable, "-c", LOOP, mode, str(period)],
                                  stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().split()
        assert line[0] == "ready", line
        self.pid = int(line[1])

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        self.p.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def wait_for(pred, timeout: float = 20.0, step: float = 0.05):
    """Poll pred() until true; a guard against hanging, not a timing assertion."""
    import time
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("condition not met within %.0f s" % timeout)
        time.sleep(step)

