"""Live kernel tests: real processes share memfds, POSIX and SysV shm and shared anonymous
maps through fork, dup and SCM_RIGHTS; the scan must give the exact numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import memtrack
from memtrack.account import account
from memtrack.json_out import to_dict, to_json
from memtrack.json_in import from_dict
from helpers.nobody import NOBODY
from helpers.procfs import procfs_scan
from livehelpers import run_memtrack, scenario

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc only")


@pytest.fixture(scope="module")
def live():
    with scenario() as info:
        info["pids"] = [info["parent"], info["c1"], info["c2"]]
        info["snap"] = memtrack.scan(pids=info["pids"], smaps=True)
        yield info


def expected(info):
    z = info["sizes"]
    pool, shm, anon, sysv, maponly, c1, pw = (z[k] for k in ("pool", "shm", "anon", "sysv", "maponly", "c1", "pw"))
    return {
        info["parent"]: dict(rss=pool + shm + anon + sysv + maponly,
                             pss=pool // 2 + shm // 2 + anon // 2 + sysv + maponly // 2,
                             uss=sysv, mapped=shm + anon + sysv + maponly, in_rss=4096 + 8192 + 4096),
        info["c1"]: dict(rss=pool + shm + anon + maponly + c1, pss=pool // 2 + shm // 2 + anon // 2 + maponly // 2 + c1,
                         uss=c1, mapped=anon + maponly, in_rss=0),
        info["c2"]: dict(rss=pw, pss=pw, uss=pw, mapped=8192, in_rss=4096),
    }


def test_exact_numbers_per_process(live):
    acct = account(live["snap"])
    for pid, want in expected(live).items():
        u = acct.processes[pid].total
        got = dict(rss=u.rss, pss=u.pss, uss=u.uss, mapped=u.mapped, in_rss=u.in_rss)
        assert got == want, pid


def test_by_kind(live):
    z = live["sizes"]
    acct = account(live["snap"])
    kinds = {k: (u.rss, u.pss) for k, u in acct.processes[live["parent"]].by_kind.items()}
    assert kinds == {"memfd": (z["pool"] + z["maponly"], z["pool"] // 2 + z["maponly"] // 2),
                     "shm": (z["shm"], z["shm"] // 2), "sysv": (z["sysv"], z["sysv"]),
                     "shmem": (z["anon"], z["anon"] // 2)}


def test_refs_fds_and_maps(live):
    snap = live["snap"]
    by_name = {b.name: b for b in snap.buffers if b.name}
    pool = by_name["pool one"]
    assert pool.inode == live["pool_ino"] and pool.size == live["sizes"]["pool"]
    assert pool.holders == tuple(sorted([live["parent"], live["c1"]]))
    assert pool.fd_refs == 3 and pool.map_refs == 0          # 2 in the parent (dup), 1 inherited
    pw = by_name["pipewire buffer"]
    assert pw.holders == (live["c2"],) and pw.fd_refs == 2 and pw.map_refs == 1
    ref = [r for r in snap.process_map[live["c2"]].refs if r.buffer == pw.id][0]
    assert len(ref.fds) == 2 and ref.vmas[0][2] == 4096 and ref.mapped == 8192
    maponly = by_name["map only"]
    assert maponly.fd_refs == 0 and maponly.map_refs == 2 and maponly.size == live["sizes"]["maponly"]
    assert maponly.size_from == "map_files"
    sysv = [b for b in snap.buffers if b.kind == "sysv" and b.inode == live["shmid"]][0]
    assert sysv.holders == (live["parent"],) and sysv.kernel_count == 1 and sysv.size == live["sizes"]["sysv"]
    shm = [b for b in snap.buffers if b.kind == "shm"][0]
    assert shm.inode == live["shm_ino"] and shm.name == os.path.basename(live["shm_path"])
    anon = [b for b in snap.buffers if b.kind == "shmem"]
    assert len(anon) == 1 and anon[0].size == live["sizes"]["anon"] and anon[0].map_refs == 2
    c1 = [b for b in snap.buffers if b.name == "c1 private"][0]
    assert c1.inode == live["c1_ino"] and c1.holders == (live["c1"],)


def test_pss_invariant(live):
    snap = live["snap"]
    acct = account(snap)
    assert acct.total.pss == acct.held_bytes == sum(b.size for b in snap.buffers if b.holders)


def test_json_round_trip_live(live):
    snap = live["snap"]
    again = from_dict(json.loads(to_json(snap)))
    assert again == snap


def test_capture_reads_back_as_the_live_scan(live, tmp_path):
    out = tmp_path / "cap.tar.gz"
    pids = ",".join(map(str, live["pids"]))
    r = run_memtrack("capture", "-o", str(out), "-p", pids, "--smaps", "-q")
    assert r.returncode == 0, r.stderr
    captured = memtrack.scan(str(out), pids=live["pids"], smaps=True)
    fresh = procfs_scan(pids=live["pids"], smaps=True)      # what the capture read: procfs
    a, b = to_dict(captured), to_dict(fresh)
    for k in ("taken_at", "source"):
        a.pop(k), b.pop(k)
    for d in (a, b):      # the cgroups' charges move with the whole machine between the reads
        d["cgroups"] = [c["path"] for c in d.get("cgroups", ())]
    assert a["processes"] == b["processes"]
    assert a["buffers"] == b["buffers"]
    assert a == b


def test_cli_ps_json_restricted(live):
    r = run_memtrack("--json", "-p", f"{live['parent']},{live['c1']}", "-q")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    got = {p["pid"]: p["totals"] for p in doc["processes"]}
    want = expected(live)
    for pid in (live["parent"], live["c1"]):
        assert {k: got[pid][k] for k in ("rss", "pss", "uss", "mapped")} == \
            {k: want[pid][k] for k in ("rss", "pss", "uss", "mapped")}
    assert doc["filter"] == {"pids": sorted([live["parent"], live["c1"]])}


def test_cli_show(live):
    r = run_memtrack("show", str(live["c2"]), "-b", "-q")
    assert r.returncode == 0, r.stderr
    line = [l for l in r.stdout.splitlines() if "pipewire buffer" in l][0]
    assert "1048577" in line and "self" in line


def test_vanished_process_is_counted(live):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    snap = memtrack.scan(pids=[p.pid, live["c2"]])
    assert p.pid in snap.skipped.vanished
    assert [x.pid for x in snap.processes] == [live["c2"]]


def test_non_root_sees_own_and_counts_others_denied(live, nobody):
    d = nobody.pkg
    drop = NOBODY
    # a process of nobody's own, holding a memfd by fd and a shared anonymous map
    holder = subprocess.Popen(drop + [nobody.exe, "-c",
                              "import os,mmap,sys;f=os.memfd_create('mine');os.ftruncate(f,20000);"
                              "print(os.fstat(f).st_ino,flush=True);sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ino = int(holder.stdout.readline())
    env = dict(os.environ, PYTHONPATH=d)
    r = subprocess.run(drop + [nobody.exe, "-m", "memtrack", "--json"], capture_output=True,
                       text=True, env=env, cwd=d)
    holder.stdin.close()
    holder.wait()
    assert r.returncode == 0, r.stderr
    assert "access denied for" in r.stderr
    assert len(r.stderr.strip().splitlines()) >= 1
    doc = json.loads(r.stdout)
    denied = set(doc["skipped"]["denied"])
    assert set(live["pids"]) <= denied            # root's processes: counted, not shown
    mine = [p for p in doc["processes"] if p["pid"] == holder.pid]
    assert mine and mine[0]["totals"]["rss"] == 20000
    assert [b for b in doc["buffers"] if b["inode"] == ino and b["kind"] == "memfd"][0]["size"] == 20000
    assert doc["kernel"]["kernel_only_bytes"] is None   # can't be known without every process
