"""The Rebuilder patches a snapshot after some processes changed: at every step its result
must equal build() of the whole observations, whatever changed."""
from __future__ import annotations

import random

import pytest

from memtrack.build import build
from memtrack.observe import FdRef, KernelBuffer, MapRef, Observations, ProcInfo
from memtrack.rebuild import Part, Rebuilder, _with_parts

META = dict(taken_at="t", source="live", hostname="h", kernel="k", backend="bpf", scope="all")


def random_part(rng: random.Random, pid: int, collide: bool) -> Part:
    fds, maps = [], []
    fd = 3
    for _ in range(rng.randrange(0, 7)):
        fd += rng.randrange(1, 4)
        kind = rng.choice(["memfd", "memfd", "shm", "dmabuf", "dmabuf", "shmem"])
        if kind == "dmabuf":
            ino = rng.choice([None, 1, 2, 3, 4, 5, 6])
            fds.append(FdRef(pid, fd, "dmabuf", "dmabuf", ino, rng.choice([4096, 8192, None]),
                             rng.choice([None, "cam", "gl"]), rng.choice([None, "system", "nv"]),
                             rng.randrange(1, 5), "fdinfo"))
        else:
            fs = {"memfd": "00:01", "shm": "00:17", "shmem": "00:01"}[kind]
            if collide and kind == "memfd" and rng.random() < 0.3:
                fs = "00:02"               # memfd:7 on two tmpfs mounts: ids need "@dev"
            ino = rng.randrange(1, 12)
            fds.append(FdRef(pid, fd, kind, fs, ino, rng.choice([4096, 65536]),
                             f"{kind}-{ino}", None, None, "stat"))
    start = 0x1000
    for _ in range(rng.randrange(0, 4)):
        start += rng.randrange(1, 5) * 0x10000
        kind = rng.choice(["memfd", "sysv", "dmabuf", "shm"])
        ln = rng.choice([0x1000, 0x4000])
        if kind == "sysv":
            maps.append(MapRef(pid, start, start + ln, 0, "sysv", "sysv", rng.randrange(1, 5), "SYSV", None))
        elif kind == "dmabuf":
            maps.append(MapRef(pid, start, start + ln, 0, "dmabuf", "dmabuf", rng.randrange(1, 7), None, 8192))
        else:
            fs = "00:01" if kind == "memfd" else "00:17"
            ino = rng.randrange(1, 12)
            maps.append(MapRef(pid, start, start + ln, 0, kind, fs, ino, f"{kind}-{ino}",
                               rng.choice([None, 65536])))
    proc = ProcInfo(pid, f"comm{pid}", rng.choice(["", f"/bin/p{pid} --x"]), rng.choice([0, 1000]))
    return Part(fds, maps, proc)


def random_kernel(rng: random.Random) -> list:
    out = []
    for ino in sorted(rng.sample(range(1, 9), rng.randrange(0, 6))):
        out.append(KernelBuffer("dmabuf", ino, rng.choice([4096, 8192, 1 << 20]), "system",
                                rng.choice([None, "k"]), rng.randrange(0, 3), "dmabuf_iter"))
    for shmid in sorted(rng.sample(range(1, 6), rng.randrange(0, 3))):
        out.append(KernelBuffer("sysv", shmid, 1 << 16, None, None, rng.randrange(0, 2), "sysvipc"))
    return out


def machine(rng, kernel) -> Observations:
    obs = Observations()
    obs.kernel = kernel
    obs.dmabuf_source, obs.dmabuf_count = "dmabuf_iter", len(kernel)
    obs.denied = rng.choice([[], [1]])
    obs.notes = ["a note"]
    return obs


@pytest.mark.parametrize("seed", range(12))
def test_every_step_equals_a_whole_build(seed):
    rng = random.Random(seed)
    collide = seed % 3 == 0
    parts = {pid: random_part(rng, pid, collide) for pid in range(10, 40, 3)}
    kernel = random_kernel(rng)
    rb = Rebuilder()
    changed = None
    for step in range(60):
        obs = machine(rng, kernel)
        got = rb.build(obs, parts, changed, **META)
        want = build(_with_parts(obs, parts, sorted(parts)), **META)
        assert got == want, f"seed {seed} step {step}"
        # the next step: a few processes change, come or go; sometimes the tables
        changed = set()
        for _ in range(rng.randrange(0, 4)):
            pid = rng.randrange(10, 60)
            if pid in parts and rng.random() < 0.3:
                del parts[pid]
            else:
                parts[pid] = random_part(rng, pid, collide)
            changed.add(pid)
        if rng.random() < 0.2:
            kernel = random_kernel(rng)
    # ids shared across mounts are built whole: fewer patches where they occur
    assert rb.partial_builds > (5 if collide else 30), (rb.partial_builds, rb.full_builds)


def test_nothing_changed_gives_the_same_pieces():
    rng = random.Random(7)
    parts = {pid: random_part(rng, pid, False) for pid in (5, 6, 7)}
    rb = Rebuilder()
    obs = machine(rng, [])
    first = rb.build(obs, parts, None, **META)
    again = rb.build(obs, parts, set(), **META)
    assert again == first and rb.partial_builds == 1
    assert all(a is b for a, b in zip(again.buffers, first.buffers))


def test_smaps_and_drm_are_always_built_whole():
    rng = random.Random(3)
    parts = {pid: random_part(rng, pid, False) for pid in (5, 6)}
    rb = Rebuilder()
    obs = machine(rng, [])
    rb.build(obs, parts, None, **dict(META, smaps=True))
    rb.build(obs, parts, set(), **dict(META, smaps=True))
    assert rb.partial_builds == 0 and rb.full_builds == 2


def test_ids_of_buffers_gone_are_forgotten():
    """Under process churn every new memfd is a new inode: the Rebuilder's count of buffers
    per "kind:inode" id keeps only ids some buffer still has (a count left at 0 for each
    one gone grew a long-running refresher without bound)."""
    rng = random.Random(5)
    rb = Rebuilder()
    parts = {10: random_part(rng, 10, False)}
    rb.build(machine(rng, []), parts, None, **META)
    ino = 1000
    for step in range(300):
        # one process goes, one comes with a memfd of its own (a new inode each time)
        gone = min(parts)
        del parts[gone]
        pid = gone + 5
        ino += 1
        parts[pid] = Part([FdRef(pid, 3, "memfd", "00:01", ino, 4096, "churn", None, None, "stat")],
                          [], ProcInfo(pid, "churn", "", 0))
        rb.build(machine(rng, []), parts, {gone, pid}, **META)
    assert rb.partial_builds > 250
    assert len(rb._ids) == 1 and all(n > 0 for n in rb._ids.values())
