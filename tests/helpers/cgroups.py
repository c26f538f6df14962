"""Cgroups a live test makes and removes: under a fresh directory of the hierarchy that holds
the memory controller (v2 where the unified hierarchy takes it, else v1 memory)."""
from __future__ import annotations

import os
import uuid

import pytest


class Cgroups:
    """Cgroups under a fresh directory of the hierarchy holding the memory controller."""

    def __init__(self):
        v2 = "/sys/fs/cgroup/cgroup.controllers"
        if os.path.exists(v2) and "memory" in open(v2).read().split():
            self.hier, self.mount = "v2", "/sys/fs/cgroup"
        elif os.path.exists("/sys/fs/cgroup/memory/memory.stat"):
            self.hier, self.mount = "v1", "/sys/fs/cgroup/memory"
        else:
            pytest.skip("no memory controller mounted at /sys/fs/cgroup")
        self.base = f"/mt-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        try:
            os.mkdir(self.mount + self.base)
        except OSError as exc:
            pytest.skip(f"cannot make a cgroup: {exc}")
        self._enable(self.base)

    def _enable(self, rel):
        if self.hier == "v2":              # the children of rel get the memory controller
            with open(f"{self.mount}{rel}/cgroup.subtree_control", "w") as f:
                f.write("+memory")

    def make(self, rel: str) -> str:
        path = self.base
        for part in rel.split("/"):
            if self.hier == "v2" and path != self.base:
                self._enable(path)
            path += "/" + part
            if not os.path.isdir(self.mount + path):
                os.mkdir(self.mount + path)
        return path

    def move(self, pid: int, path: str) -> None:
        with open(f"{self.mount}{path}/cgroup.procs", "w") as f:
            f.write(str(pid))

    def stat(self, path: str) -> dict:
        out = {}
        with open(f"{self.mount}{path}/memory.stat") as f:
            for line in f:
                k, v = line.split()
                out[k] = int(v)
        return out

    def remove(self):
        for d, _subdirs, _files in os.walk(self.mount + self.base, topdown=False):
            try:
                os.rmdir(d)
            except OSError:
                pass
