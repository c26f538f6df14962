"""Cgroups on the live kernel: the test makes its own cgroups (v2 where the unified hierarchy
takes the memory controller, else v1 memory), named as systemd, docker (both drivers) and
containerd under kubepods would name them, moves processes that share memfds, /dev/shm
files and SysV segments into them, faults shared pages from one group and holds them from
another, and checks the group accounting and the charged figures against memory.stat as
the test reads it. Everything is removed after, on failure too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from livehelpers import run_memtrack
from helpers.cgroups import Cgroups

C1, C2, C3 = (uuid.uuid4().hex * 2 for _ in range(3))      # 64-hex container ids
POD = str(uuid.uuid4())
MiB = 1 << 20

CHILD = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
maps = {}

def mapped(fd, touch):
    size = os.fstat(fd).st_size
    addr = libc.mmap(None, size, 3, 1, fd, 0)               # PROT_READ|WRITE, MAP_SHARED
    assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    if touch:                                               # fault every page: charged here
        for off in range(0, size, 4096):
            ctypes.memset(addr + off, 1, 1)
    maps[fd] = (addr, size)
    return fd

print("ready", os.getpid(), flush=True)
for line in sys.stdin:
    cmd, *a = line.split()
    if cmd == "memfd":
        fd = os.memfd_create(a[0], 0); os.ftruncate(fd, int(a[1])); print(mapped(fd, True), flush=True)
    elif cmd == "shm":
        fd = os.open("/dev/shm/" + a[0], os.O_CREAT | os.O_RDWR, 0o600); os.ftruncate(fd, int(a[1]))
        print(mapped(fd, True), flush=True)
    elif cmd == "openshm":
        print(mapped(os.open("/dev/shm/" + a[0], os.O_RDWR), False), flush=True)
    elif cmd == "openfd":
        # touching pages another process faulted maps them here, charging nothing
        print(mapped(os.open("/proc/%s/fd/%s" % (a[0], a[1]), os.O_RDWR), a[2:] == ["touch"]), flush=True)
    elif cmd in ("sysv", "attach"):
        shmid = libc.shmget(int(a[0]), int(a[1]) if cmd == "sysv" else 0, 0o1600 if cmd == "sysv" else 0)
        assert shmid >= 0, ctypes.get_errno()
        addr = libc.shmat(shmid, None, 0)
        if cmd == "sysv":
            for off in range(0, int(a[1]), 4096):
                ctypes.memset(addr + off, 1, 1)
        print(shmid, flush=True)
    elif cmd == "close":
        fd = int(a[0]); addr, size = maps.pop(fd); libc.munmap(addr, size); os.close(fd)
        print("ok", flush=True)
    elif cmd == "quit":
        break
"""


class Child:
    def __init__(self):
        self.p = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)
        line = self.p.stdout.readline().split()
        assert line and line[0] == "ready", line
        self.pid = int(line[1])

    def __call__(self, *words) -> str:
        self.p.stdin.write(" ".join(map(str, words)) + "\n")
        self.p.stdin.flush()
        out = self.p.stdout.readline().strip()
        assert out, f"child {self.pid} failed on {words}"
        return out

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        self.p.stdin.close()
        self.p.stdout.close()


@pytest.fixture
def world():
    """The cgroups, processes, /dev/shm file and SysV segment of one test, all undone after."""
    cg = Cgroups()
    kids, shm, keys = [], [], []
    try:
        yield cg, kids, shm, keys
    finally:
        for k in kids:
            k.stop()
        for name in shm:
            try:
                os.unlink("/dev/shm/" + name)
            except OSError:
                pass
        for key in keys:
            subprocess.run(["ipcrm", "-M", str(key)], capture_output=True)
        cg.remove()


@pytest.mark.requires_root("making cgroups and moving processes need root")
def test_held_and_charged_per_group_on_the_live_kernel(world):
    cg, kids, shm, keys = world
    svc = cg.make("system.slice/mt-cg-test.service")
    dock = cg.make(f"system.slice/docker-{C1}.scope")
    ctd = cg.make(f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}.slice/"
                  f"cri-containerd-{C2}.scope")
    cgfs = cg.make(f"docker/{C3}")           # docker's cgroupfs driver
    start = cg.make("mt-start")              # where d faults its pages before it moves
    a, b, c, d, e = (Child() for _ in range(5))
    kids += [a, b, c, d, e]
    for k, where in ((a, dock), (b, svc), (c, ctd), (d, start), (e, dock)):
        cg.move(k.pid, where)
    name = f"mt-cg-{os.getpid()}"
    shm.append(name)
    key = 0x6d740000 + (os.getpid() & 0xffff)
    keys.append(key)
    # a (docker) faults a memfd, a /dev/shm file and a SysV segment: charged to docker
    ma = a("memfd", "mA", 4 * MiB)
    a("shm", name, 2 * MiB)
    a("sysv", key, MiB)
    # d faults its memfd in its first cgroup, then moves to the service (the charge stays)
    md = d("memfd", "mD", MiB)
    cg.move(d.pid, svc)
    b("openfd", a.pid, ma)
    b("openfd", d.pid, md)
    b("openshm", name)
    c("openshm", name)
    c("attach", key)
    e("openfd", a.pid, ma, "touch")         # e maps the pages a faulted: kpagecgroup can tell
    cg.move(e.pid, cgfs)                     # across groups, holding what docker was charged
    a("close", ma)                           # a holds the memfd no more: b and e do
    pids = [k.pid for k in kids]
    where = {a.pid: dock, b.pid: svc, c.pid: ctd, d.pid: svc, e.pid: cgfs}

    docs = {}
    for backend in ("procfs", "bpf"):
        r = run_memtrack("--backend", backend, "--json", "-q", "-p", ",".join(map(str, pids)), "-b")
        if r.returncode != 0 and backend == "bpf":
            continue                         # no bpf here: procfs alone (tests/test_bpf.py says why)
        assert r.returncode == 0, r.stderr
        docs[backend] = json.loads(r.stdout)
        stats = {p: cg.stat(p) for p in (svc, dock, ctd, cgfs, start)}     # read right after
        doc = docs[backend]
        assert {p["pid"]: p["cgroup"] for p in doc["processes"]} == where
        table = {t["path"]: t for t in doc["cgroups"]}
        assert set(table) == {svc, dock, ctd, cgfs}
        own, mapped = ("shmem", "mapped_file") if cg.hier == "v1" else ("shmem", "file_mapped")
        for path, t in table.items():
            assert t["hierarchy"] == cg.hier
            assert t["stat"]["shmem"] == stats[path][own], path
            assert t["stat"]["file_mapped"] == stats[path][mapped], path
        # docker faulted 4 + 2 + 1 MiB of shmem; the service holds 5 MiB it was never charged
        assert stats[dock]["shmem"] >= 7 * MiB
        assert stats[svc]["shmem"] == 0 and stats[start]["shmem"] >= MiB

    if "bpf" in docs:                        # both backends: the same cgroups and charges
        assert docs["bpf"]["cgroups"] == docs["procfs"]["cgroups"]
        assert [p.get("cgroup") for p in docs["bpf"]["processes"]] == \
            [p.get("cgroup") for p in docs["procfs"]["processes"]]

    # group accounting, worked out here from the buffers' sizes and who holds them
    def split(size, groups):
        base, rem = divmod(size, len(groups))
        return {g: base + (i < rem) for i, g in enumerate(sorted(groups))}

    r = run_memtrack("ps", "--group", "cgroup", "--json", "-q", "-p", ",".join(map(str, pids)))
    assert r.returncode == 0, r.stderr
    got = {g["group"]: g for g in json.loads(r.stdout)["groups"]}
    want = {g: 0 for g in (svc, dock, ctd, cgfs)}
    for size, holders in ((4 * MiB, [svc, cgfs]), (2 * MiB, [dock, svc, ctd]), (MiB, [dock, ctd]), (MiB, [svc])):
        for g, n in split(size, holders).items():
            want[g] += n
    assert {g: v["pss"] for g, v in got.items()} == want
    assert got[svc]["uss"] == MiB                            # mD: held by b and d, both the service's
    assert got[svc]["pids"] == sorted([b.pid, d.pid])
    assert sum(v["pss"] for v in got.values()) == 8 * MiB     # every held byte, once
    total = "total_shmem" if cg.hier == "v1" else "shmem"
    assert got[dock]["charged"]["shmem"] == cg.stat(dock)[total]
    assert got[dock]["charged"]["shmem"] >= 7 * MiB > got[dock]["pss"]
    assert got[svc]["charged"]["shmem"] == 0 < got[svc]["pss"]

    # the same processes by container: the ids the runtimes' cgroup names carry
    r = run_memtrack("ps", "--group", "container", "--json", "-q", "-p", ",".join(map(str, pids)))
    assert r.returncode == 0, r.stderr
    got = {g["group"]: g for g in json.loads(r.stdout)["groups"]}
    cid = {svc: "(host)", dock: f"docker://{C1}", ctd: f"containerd://{C2}", cgfs: f"docker://{C3}"}
    want_c = {g: 0 for g in cid.values()}
    for size, holders in ((4 * MiB, [svc, cgfs]), (2 * MiB, [dock, svc, ctd]), (MiB, [dock, ctd]), (MiB, [svc])):
        for g, n in split(size, [cid[h] for h in holders]).items():     # the byte goes by these names
            want_c[g] += n
    for path in (dock, ctd, cgfs):
        assert got[cid[path]]["pids"] == sorted(p for p, w in where.items() if w == path)
        assert got[cid[path]]["pss"] == want_c[cid[path]]
    assert {b.pid, d.pid} <= set(got["(host)"]["pids"])
    r = run_memtrack("ps", "--group", "pod", "--json", "-q", "-p", ",".join(map(str, pids)))
    got = {g["group"]: g for g in json.loads(r.stdout)["groups"]}
    # the pod shares the /dev/shm file and the SysV segment with one other group, "(no pod)"
    assert got[POD]["pids"] == [c.pid] and got[POD]["pss"] == MiB + MiB // 2

    # show /CGROUP: docker holds the /dev/shm file and the segment (its pages charged to it)
    # and was charged for the memfd only others hold now (seen through e's mapping)
    r = run_memtrack("show", dock, "--json", "-q")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["pages_told"] is True and doc["charged"]["shmem"] == cg.stat(dock)[total]
    held = {e["name"]: e for e in doc["buffers"]}
    assert held[name]["charged_here"] == 2 * MiB
    assert held[name]["holders_here"] == [a.pid]
    assert sorted(held[name]["holders_elsewhere"]) == sorted([b.pid, c.pid])
    others = {e["name"]: e for e in doc["others_charged_here"]}
    assert others["mA"]["charged_here"] == 4 * MiB and sorted(others["mA"]["holders_elsewhere"]) == \
        sorted([b.pid, e.pid])
    r = run_memtrack("show", svc, "--json", "-q")
    doc = json.loads(r.stdout)
    held = {e["name"]: e for e in doc["buffers"]}
    assert held["mD"]["charged_here"] == 0 and held["mD"]["charged_elsewhere"] == MiB   # d's first cgroup
    assert doc["held"]["uss"] == MiB and doc["charged"]["shmem"] == 0
    r = run_memtrack("show", svc, "-q")
    assert r.returncode == 0 and "ChgElsewhere" in r.stdout and "mD" in r.stdout, r.stderr
    r = run_memtrack("show", "/../etc", "-q")
    assert r.returncode != 0 and r.stderr.count("\n") == 1

    r = run_memtrack("ps", "--group", "unit", "-q", "-p", ",".join(map(str, pids)))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[-1] == "Unit" and "ChgShmem" in lines[0]
    assert any(line.endswith(" mt-cg-test.service") for line in lines)
    assert any(line.endswith(f" docker-{C1}.scope") for line in lines)
