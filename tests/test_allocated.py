"""Allocated bytes against the real kernel: buffers of 8 MiB with 1 MiB written, held by
two processes (helpers/sparse.py), must say allocated 1 MiB and mem 512 KiB per holder, in
both backends, live and through every capture path; a capture from before the block count
was recorded reads back with allocated unknown."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import memtrack
from memtrack import remote
from memtrack.account import account
from memtrack.json_in import from_dict
from memtrack.json_out import to_dict, to_json
from memtrack.model import Snapshot
from memtrack.procfs import scan
from memtrack.sources.live import LiveSource

from livehelpers import run_memtrack, scenario
from remote_util import SCRIPT, android_path, busybox_path

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc only"),
              pytest.mark.requires_root("map_files (shared anonymous sizes) needs root")]

MiB = 1 << 20


@pytest.fixture(scope="module")
def sparse():
    with scenario("sparse.py") as info:
        info["pids"] = [info["parent"], info["child"]]
        yield info


def kernel_says(info) -> dict:
    """The allocated bytes of each buffer, as the test reads them from /proc itself: st_blocks
    of the holder's fd or mapping, and the rss + swap columns of the SysV table."""
    parent = info["parent"]
    out = {}
    for fd in os.listdir(f"/proc/{parent}/fd"):
        st = os.stat(f"/proc/{parent}/fd/{fd}")
        if st.st_ino in (info["memfd_ino"], info["shm_ino"]) and st.st_size == info["size"]:
            out["memfd" if st.st_ino == info["memfd_ino"] else "shm"] = st.st_blocks * 512
    with open(f"/proc/{parent}/maps") as f:
        for line in f:
            if line.rstrip().endswith("/dev/zero (deleted)") and line.split()[1].endswith("s"):
                st = os.stat(f"/proc/{parent}/map_files/{line.split()[0]}")
                if st.st_size == info["size"]:
                    out["shmem"] = st.st_blocks * 512
    with open("/proc/sysvipc/shm") as f:
        cols = f.readline().split()
        for line in f:
            row = dict(zip(cols, line.split()))
            if int(row["shmid"]) == info["shmid"]:
                out["sysv"] = int(row["rss"]) + int(row["swap"])
                out["sysv_swap"] = int(row["swap"])
    return out


def held(snap, info):
    """kind -> the sparse buffer of that kind."""
    pids = tuple(sorted(info["pids"]))
    got = {}
    for b in snap.buffers:
        if b.holders == pids and b.size == info["size"]:
            got[b.kind] = b
    return got


def bpf_scan(pids):
    from memtrack import bpf as mbpf
    why = mbpf.unavailable()
    if why:
        pytest.skip(f"bpf backend cannot run here: {why}")
    try:
        return mbpf.BpfScanner(reuse=False).scan(pids=pids)
    except mbpf.BpfUnavailable as exc:
        pytest.skip(f"bpf backend cannot run here: {exc}")


def live_scan(backend, pids):
    return scan(LiveSource(), pids=pids) if backend == "procfs" else bpf_scan(pids)


@pytest.mark.parametrize("backend", ["procfs", "bpf"])
def test_allocated_and_mem_of_sparse_buffers(sparse, backend):
    snap = live_scan(backend, sparse["pids"])
    k = kernel_says(sparse)
    assert k["memfd"] == k["shm"] == k["shmem"] == k["sysv"] == MiB     # the scenario is as meant
    bufs = held(snap, sparse)
    assert sorted(bufs) == ["memfd", "shm", "shmem", "sysv"]
    for kind, b in bufs.items():
        assert (b.size, b.allocated) == (8 * MiB, MiB), kind
    assert bufs["sysv"].swapped == k["sysv_swap"]
    assert bufs["memfd"].swapped is None        # the kernel tells a tmpfs file's swap apart nowhere
    acct = account(snap)
    for pid in sparse["pids"]:
        u = acct.processes[pid]
        assert u.total.mem == 4 * (MiB // 2) and u.total.unknown_alloc == 0
        assert {kind: ku.mem for kind, ku in u.by_kind.items()} == \
            {"memfd": MiB // 2, "shm": MiB // 2, "shmem": MiB // 2, "sysv": MiB // 2}
        assert u.total.pss == 4 * (4 * MiB)     # pss still splits the size
    doc = to_dict(snap)
    assert doc["totals"]["mem"] == 4 * MiB == doc["kernel"]["held_allocated"]
    for p in doc["processes"]:
        assert p["totals"]["mem"] == 2 * MiB and p["by_kind"]["memfd"]["mem"] == MiB // 2
    for b in doc["buffers"]:
        if b["kind"] in bufs and b["id"] == bufs[b["kind"]].id:
            assert b["allocated"] == MiB
    assert json.loads(to_json(snap)) == doc


def test_both_backends_give_the_same_allocated(sparse):
    from helpers.snapshots import comparable
    b = bpf_scan(sparse["pids"])
    a = scan(LiveSource(), pids=sparse["pids"])
    assert comparable(b, sparse["pids"]) == comparable(a, sparse["pids"])
    assert [x.allocated for x in held(a, sparse).values()] == [MiB] * 4


def test_mem_sums_to_the_allocated_bytes_to_the_byte(sparse):
    """Three holders of an odd byte count: the remainder goes as pss's does."""
    from memtrack.model import Buffer, Process, Ref
    b = Buffer("memfd:1", "memfd", 1, "00:01", 10, allocated=7, holders=(3, 5, 9))
    snap = Snapshot(buffers=(b,), processes=tuple(Process(p, refs=(Ref("memfd:1", (3,)),)) for p in (3, 5, 9)))
    acct = account(snap)
    assert [acct.processes[p].total.mem for p in (3, 5, 9)] == [3, 2, 2]
    assert [acct.processes[p].total.pss for p in (3, 5, 9)] == [4, 3, 3]
    assert acct.total.mem == acct.held_allocated == 7
    live = scan(LiveSource(), pids=sparse["pids"])
    acct = account(live)
    assert sum(u.total.mem for u in acct.processes.values()) == acct.held_allocated


def test_python_capture_carries_allocated(sparse, tmp_path):
    path = str(tmp_path / "cap.tar.gz")
    r = run_memtrack("capture", "-o", path, "-p", ",".join(map(str, sparse["pids"])))
    assert r.returncode == 0, r.stderr
    snap = memtrack.scan(path, pids=sparse["pids"])
    assert {k: b.allocated for k, b in held(snap, sparse).items()} == \
        {"memfd": MiB, "shm": MiB, "shmem": MiB, "sysv": MiB}


def shell(tmp_path, name):
    if name == "dash":
        return ["dash"], None
    d = busybox_path(tmp_path) if name == "busybox" else android_path(tmp_path)
    return [os.path.join(d, "sh")], dict(os.environ, PATH=d)


@pytest.mark.parametrize("sh", ["dash", "busybox", "mksh+toybox"])
def test_script_capture_carries_allocated(sparse, tmp_path, sh):
    """GNU (dash + coreutils), busybox and toybox stat all give %b in 512-byte %B units."""
    cmd, env = shell(tmp_path, sh)
    p = subprocess.run(cmd + [SCRIPT, "-f", "stream", "-p", ",".join(map(str, sparse["pids"]))],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=120)
    assert p.returncode == 0 and p.stderr == b"", p.stderr.decode()
    tree = remote.decode(p.stdout)
    path = str(tmp_path / "cap.tar.gz")
    remote.write_tree(tree, path, "test")
    snap = memtrack.scan(path, pids=sparse["pids"])
    assert {k: b.allocated for k, b in held(snap, sparse).items()} == \
        {"memfd": MiB, "shm": MiB, "shmem": MiB, "sysv": MiB}


def test_old_capture_reads_back_with_allocated_unknown(sparse, tmp_path):
    """Sidecars of five fields (as before the block count) and a SysV table without its rss
    and swap columns: allocated null, mem not guessed, the buffers counted as unknown."""
    tree = remote.decode(subprocess.run(
        ["dash", SCRIPT, "-f", "stream", "-p", ",".join(map(str, sparse["pids"]))],
        stdout=subprocess.PIPE, check=True, timeout=120).stdout)
    for name in list(tree.files):
        if name.endswith(("/fdstat", "/mapstat")):
            lines = tree.files[name].decode().splitlines()
            assert all(len(line.split()) == 6 for line in lines)
            tree.files[name] = "".join(" ".join(line.split()[:5]) + "\n" for line in lines).encode()
    table = tree.files["proc/sysvipc/shm"].decode().splitlines()
    tree.files["proc/sysvipc/shm"] = "".join(
        " ".join(line.split()[:-2]) + "\n" for line in table).encode()
    path = str(tmp_path / "old.tar.gz")
    remote.write_tree(tree, path, "test")
    snap = memtrack.scan(path, pids=sparse["pids"])
    bufs = held(snap, sparse)
    assert sorted(bufs) == ["memfd", "shm", "shmem", "sysv"]
    assert all(b.allocated is None and b.swapped is None for b in bufs.values())
    acct = account(snap)
    for pid in sparse["pids"]:
        assert acct.processes[pid].total.mem == 0 and acct.processes[pid].total.unknown_alloc == 4
    doc = to_dict(snap)
    assert doc["processes"][0]["totals"]["unknown_allocated"] == 4
    assert all(b["allocated"] is None for b in doc["buffers"] if b["holders"])


def test_old_snapshot_json_reads_with_allocated_null(sparse):
    doc = to_dict(scan(LiveSource(), pids=sparse["pids"]))
    for b in doc["buffers"]:
        del b["allocated"], b["swapped"]
    for p in doc["processes"]:
        for u in [p["totals"], *p["by_kind"].values()]:
            del u["mem"], u["unknown_allocated"]
    snap = from_dict(doc)
    assert all(b.allocated is None for b in snap.buffers)
    assert account(snap).total.mem == 0


def test_ps_shows_mem(sparse):
    r = run_memtrack("ps", "-p", ",".join(map(str, sparse["pids"])), "-b", check=True)
    head = r.stdout.splitlines()[0].split()
    assert head[:4] == ["PID", "Rss", "Pss", "Mem"], head
    rows = [line.split() for line in r.stdout.splitlines()[1:] if re.match(r"\s*\d", line) and "TOTAL" not in line]
    assert {int(row[0]): int(row[3]) for row in rows} == {p: 2 * MiB for p in sparse["pids"]}


def test_prometheus_carries_allocated_and_mem(sparse):
    pytest.importorskip("prometheus_client")
    from memtrack.views.prometheus import families
    snap = scan(LiveSource(), pids=sparse["pids"]).restrict(pids=set(sparse["pids"]))   # no other SysV
    fams = {f.name: f for f in families(snap)}
    mem = {tuple(s.labels.values()): s.value for s in fams["memtrack_process_mem_bytes"].samples}
    assert {k: v for k, v in mem.items() if k[0] == "mt-sparse"} == \
        {("mt-sparse", kind): MiB for kind in ("memfd", "shm", "shmem", "sysv")}   # two holders each
    assert fams["memtrack_held_allocated_bytes"].samples[0].value == 4 * MiB
    alloc = {}
    for s in fams["memtrack_buffer_allocated_bytes"].samples:
        alloc[s.labels["kind"]] = alloc.get(s.labels["kind"], 0) + s.value
    assert alloc == {"memfd": MiB, "shm": MiB, "shmem": MiB, "sysv": MiB}
    assert [s.value for s in fams["memtrack_buffer_swapped_bytes"].samples] == [0]   # SysV's, no swap here


def test_diff_shows_a_buffer_filled_and_trimmed(tmp_path):
    """This process's own memfd: 1 MiB written between two scans is a fill, a hole punched
    is a trim; its size never moves."""
    import ctypes
    from memtrack.diff import diff
    fd = os.memfd_create("diff fill")
    try:
        os.ftruncate(fd, 8 * MiB)
        ino = os.fstat(fd).st_ino
        me = [os.getpid()]

        def mine(s):
            return s.restrict(kinds={"memfd"})
        a = mine(scan(LiveSource(), pids=me))
        os.pwrite(fd, b"f" * MiB, 0)
        b = mine(scan(LiveSource(), pids=me))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        assert libc.fallocate(fd, 3, 0, MiB // 2) == 0     # PUNCH_HOLE | KEEP_SIZE
        c = mine(scan(LiveSource(), pids=me))
        d1, d2 = diff(a, b), diff(b, c)
        fill = [e for e in d1.buffers if e.buffer.inode == ino]
        assert [(e.action, e.old_allocated, e.buffer.allocated) for e in fill] == [("fill", 0, MiB)]
        trim = [e for e in d2.buffers if e.buffer.inode == ino]
        assert [(e.action, e.old_allocated, e.buffer.allocated) for e in trim] == [("trim", MiB, MiB // 2)]
        doc = d1.to_dict()
        assert [x["allocated"] for x in doc["buffers"]["filled"] if x["inode"] == ino] == [MiB]
        me_delta = [p for p in d1.processes if p.pid == me[0]][0]
        assert me_delta.mem[1] - me_delta.mem[0] == MiB and me_delta.delta("pss") == 0
        path_a, path_b = str(tmp_path / "a.json"), str(tmp_path / "b.json")
        for path, s in ((path_a, a), (path_b, b)):
            with open(path, "w") as f:
                f.write(to_json(s))
        r = run_memtrack("diff", path_a, path_b, "-b")
        assert r.returncode == 0, r.stderr
        assert "1 filled" in r.stdout and f"allocated 0 -> {MiB} of {8 * MiB}" in r.stdout
    finally:
        os.close(fd)


OLD_DDL_DROPS = (",\n    held_allocated INTEGER", ",\n    allocated INTEGER", ", mem INTEGER")


def test_history_records_mem_and_reads_an_older_history(sparse, tmp_path):
    import sqlite3
    from memtrack.history import schema
    from memtrack.history.analysis import analyze
    from memtrack.history.load import load
    from memtrack.history.recorder import Recorder
    snap = scan(LiveSource(), pids=sparse["pids"])
    db = str(tmp_path / "new.db")
    rec = Recorder(db)
    rec.add(snap, t=1.0)
    rec.add(snap, t=2.0)
    rec.close()
    h = load(db)
    assert h.held_allocated == [4 * MiB, 4 * MiB]
    mems = {h.processes[k].pid: spans[0][2][5] for k, spans in h.usage.items()}
    assert mems == {p: 2 * MiB for p in sparse["pids"]}
    assert {b.allocated for b in h.buffers.values() if b.size == 8 * MiB} == {MiB}
    doc = analyze(h)
    assert {p["pid"]: p["mem"]["end"] for p in doc["processes"]} == {p: 2 * MiB for p in sparse["pids"]}
    # a history written before the columns existed: its DDL without them
    ddl = schema.DDL
    for drop in OLD_DDL_DROPS:
        assert drop in ddl
        ddl = ddl.replace(drop, "")
    old = str(tmp_path / "old.db")
    con = sqlite3.connect(old)
    con.executescript(ddl)
    con.execute("INSERT INTO meta VALUES ('schema', '1')")
    con.execute("INSERT INTO runs(id, started) VALUES (1, 0)")
    con.execute("INSERT INTO snapshots(run, t, complete, held_bytes) VALUES (1, 0.5, 1, 0)")
    con.commit()
    con.close()
    h = load(old)                                       # read-only: nothing added to it
    assert h.held_allocated is None and len(h) == 1
    r = run_memtrack("report", old)
    assert r.returncode == 0, r.stderr
    rec = Recorder(old)                                 # appending: the columns come first
    rec.add(snap, t=1.0)
    rec.close()
    h = load(old)
    assert h.held_allocated == [None, 4 * MiB]
    assert {h.processes[k].pid: spans[0][2][5] for k, spans in h.usage.items()} == mems


@pytest.mark.parametrize("backend", ["procfs", "bpf"])
def test_smaps_hidden_counts_no_untouched_pages(sparse, backend):
    """Hidden (--smaps) was size - in_rss: 8 MiB buffers with 1 MiB in them claimed 7 MiB of
    hidden memory each. Now allocated - in_rss: the parent touched its SysV and shared
    anonymous megabyte (in its RSS), not the memfd and /dev/shm file it only wrote through
    fds; the child, which touched nothing, has all four megabytes outside its RSS."""
    pids = sparse["pids"]
    snap = scan(LiveSource(), pids=pids, smaps=True) if backend == "procfs" else None
    if snap is None:
        from memtrack import bpf as mbpf
        bpf_scan(pids)                                  # skips where bpf cannot run
        snap = mbpf.BpfScanner(reuse=False).scan(pids=pids, smaps=True)
    acct = account(snap.restrict(pids=set(pids)))
    parent, child = acct.processes[sparse["parent"]].total, acct.processes[sparse["child"]].total
    assert (parent.in_rss, parent.hidden) == (2 * MiB, 2 * MiB)
    assert (child.in_rss, child.hidden) == (0, 4 * MiB)
    r = run_memtrack("ps", "--smaps", "-b", "-p", ",".join(map(str, pids)), "--backend", backend)
    assert r.returncode == 0, r.stderr
    head = r.stdout.splitlines()[0].split()
    row = [line.split() for line in r.stdout.splitlines() if line.split()[:1] == [str(sparse["child"])]][0]
    assert row[head.index("Hidden")] == str(4 * MiB)


def test_top_shows_mem_and_a_buffer_filling_up():
    """A memfd of 64 KiB, empty, then mapped and every page touched: top's Mem column moves
    and the fill is among its events."""
    pytest.importorskip("rich")
    from livekids import Kid
    from helpers.ptytop import PtyTop
    with Kid() as kid:
        fd = kid.add("fillme", 65536)
        t = PtyTop("-d", "0.2", "--verify-every", "1", "-p", str(kid.pid))
        try:
            t.wait_text("keys: p m r u d")               # the frame's last line: all of it is in
            assert "Mem" in t.text and "mem total: 0 " in t.text
            kid.map(fd)
            t.wait_text("'fillme' filled: allocated 0 -> 64.0 KiB of 64.0 KiB")
            t.wait_text("mem total: 64.0 KiB")
            t.send(b"q")
            assert t.wait_exit() == 0
        finally:
            t.close()
