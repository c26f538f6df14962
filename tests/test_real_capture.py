"""The real capture from an NVIDIA H100 (Linux 6.18, open kernel module 580.159.04):
one 2 MiB nv_dmabuf buffer exported by pid 416 and inherited by its fork child 454, plus
memfds, POSIX and SysV shm and shared anonymous maps of the same three processes."""
from __future__ import annotations

import json
import os

import pytest

import memtrack
from memtrack.account import account
from memtrack.json_out import to_json
from memtrack.json_in import from_dict
from helpers.paths import REAL_CAPTURE
from livehelpers import run_memtrack

MiB = 1 << 20
pytestmark = pytest.mark.skipif(not os.path.exists(REAL_CAPTURE), reason="shared fixtures absent")


@pytest.fixture(scope="module")
def snap():
    return memtrack.scan(REAL_CAPTURE, smaps=True)


def test_dmabuf_two_holders(snap):
    acct = account(snap)
    d = snap.buffer("dmabuf:1")
    assert (d.size, d.exporter, d.name, d.holders, d.fd_refs, d.map_refs) == \
        (2 * MiB, "nv_dmabuf", None, (416, 454), 2, 0)
    for pid in (416, 454):
        k = acct.processes[pid].by_kind["dmabuf"]
        assert (k.rss, k.pss, k.uss, k.mapped, k.in_rss) == (2 * MiB, 1 * MiB, 0, 0, 0)
    assert "dmabuf" not in acct.processes[455].by_kind


def test_debugfs_agrees_no_kernel_only(snap):
    acct = account(snap)
    assert snap.kernel.dmabuf_source == "debugfs"
    assert snap.kernel.dmabuf_exported_bytes == 2 * MiB and snap.kernel.dmabuf_exported_count == 1
    assert acct.kernel_only_bytes == 0 and acct.kernel_only_buffers == 0
    assert acct.by_kind["dmabuf"].pss == snap.kernel.dmabuf_exported_bytes
    assert snap.buffer("dmabuf:1").kernel_count == 2


def test_memfds_and_shm_of_the_same_processes(snap):
    pool = snap.buffer("memfd:2052")
    assert (pool.name, pool.holders, pool.fd_refs, pool.map_refs, pool.dev) == \
        ("wl_shm-pool", (416, 454, 455), 4, 3, "00:01")
    pw = snap.buffer("memfd:2053")
    assert (pw.name, pw.holders, pw.fd_refs, pw.map_refs) == ("pipewire-buffer", (416, 454, 455), 4, 0)
    # no fdstat sidecar in this capture: a memfd's size can't be known, so it is null
    assert pool.size is None and pw.size is None
    shm = snap.buffer("shm:2")
    assert (shm.name, shm.dev, shm.holders, shm.fd_refs, shm.map_refs) == \
        ("probe-shm", "00:1b", (416, 454, 455), 4, 3)
    ref455 = {r.buffer: r for r in snap.process_map[455].refs}
    assert ref455["memfd:2053"].fds == (3, 4) and ref455["memfd:2052"].fds == ()
    assert ref455["memfd:2052"].mapped == 4 * MiB


def test_sysv_and_shared_anonymous(snap):
    acct = account(snap)
    seg = snap.buffer("sysv:0")
    assert (seg.size, seg.holders, seg.kernel_count, seg.size_from) == (3 * MiB, (416, 454, 455), 3, "sysvipc")
    for pid in (416, 454, 455):
        assert acct.processes[pid].by_kind["sysv"].pss == 1 * MiB
    anon = [b for b in snap.buffers if b.kind == "shmem"]
    assert sorted(b.inode for b in anon) == [2048, 2049, 2050, 2051, 2054]
    assert all(b.holders == (416, 454, 455) and b.size is None for b in anon)


def test_totals_reconcile(snap):
    acct = account(snap)
    assert acct.total.pss == acct.held_bytes == 2 * MiB + 3 * MiB
    assert [acct.processes[p].total.rss for p in (416, 454, 455)] == [5 * MiB, 5 * MiB, 3 * MiB]
    assert [acct.processes[p].total.pss for p in (416, 454, 455)] == [2 * MiB, 2 * MiB, 1 * MiB]
    assert acct.processes[416].total.in_rss == 64 * 1024     # smaps: 64 KiB of SysV pages resident


def test_json_round_trip(snap):
    assert from_dict(json.loads(to_json(snap))) == snap


def test_saved_json_reads_back_through_cli(tmp_path):
    r = run_memtrack("--root", REAL_CAPTURE, "--json", "-q")
    assert r.returncode == 0, r.stderr
    path = tmp_path / "snap.json"
    path.write_text(r.stdout)
    again = run_memtrack("--root", str(path), "--json", "-q")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(r.stdout)
    table = run_memtrack("--root", str(path), "-b", "-q")
    rows = {l.split()[0]: l.split() for l in table.stdout.splitlines()[1:4]}
    assert rows["416"][1:3] == ["5242880+", "2097152+"]
