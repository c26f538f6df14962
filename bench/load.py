"""A load of real processes holding shared memfds, for the benchmarks.

    with Load(procs=1000, per_proc=20) as load: ...   # load.pids

A tenth of each process's buffers are shared by a group of 10 processes (inherited from the
parent), three of its own buffers and one shared buffer are mapped. Nothing is touched, so
the load costs little memory."""
from __future__ import annotations

import mmap
import os
import signal
import time


class Load:
    def __init__(self, procs: int = 1000, per_proc: int = 20, group: int = 10, size: int = 65536):
        self.procs, self.per_proc, self.group, self.size = procs, per_proc, group, size
        self.pids = []

    def __enter__(self):
        shared_per = max(1, self.per_proc // 10)
        groups = (self.procs + self.group - 1) // self.group
        shared = [[os.memfd_create(f"group{g}-{j}") for j in range(shared_per)] for g in range(groups)]
        for fds in shared:
            for fd in fds:
                os.ftruncate(fd, self.size)
        r, w = os.pipe()
        for i in range(self.procs):
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(r)
                    mine = shared[i // self.group]
                    for g, fds in enumerate(shared):
                        if g != i // self.group:
                            for fd in fds:
                                os.close(fd)
                    keep = []
                    own = []
                    for j in range(self.per_proc - shared_per):
                        fd = os.memfd_create(f"p{i}-buf{j}")
                        os.ftruncate(fd, self.size)
                        own.append(fd)
                    maps = [mmap.mmap(fd, self.size) for fd in own[:3] + mine[:1]]
                    keep.append(maps)
                    os.write(w, b".")
                    os.close(w)
                    signal.pause()
                finally:
                    os._exit(0)
            self.pids.append(pid)
        os.close(w)
        got = 0
        while got < self.procs:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            got += len(chunk)
        os.close(r)
        for fds in shared:
            for fd in fds:
                os.close(fd)
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass
