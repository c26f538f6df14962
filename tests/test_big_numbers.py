"""Every number the kernel can print flows through every command: sparse memfds of 2^63-1
bytes (free for any user) held by real processes, and 2^64-1 dma-bufs in an exact
kernel-format tree, through record, report, plot, export-trace, diff, textfile and --json."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from kfixture import Tree
from livehelpers import run_memtrack
from livekids import wait_for

import memtrack
from memtrack.history import Recorder, analyze, load
from memtrack.json_in import from_dict

HUGE = 2 ** 63 - 1                  # MAX_LFS_FILESIZE: the largest size ftruncate() allows
U64 = 2 ** 64 - 1

#: three sparse memfds of HUGE bytes, then a fork: two processes hold all three
HOLDER = r"""
import os, sys, time
fds = []
for i in range(3):
    fd = os.memfd_create("huge%d" % i)
    os.ftruncate(fd, 2 ** 63 - 1)
    fds.append(fd)
if os.fork() == 0:
    time.sleep(600)
    os._exit(0)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holders():
    p = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        child = wait_for(lambda: [int(x) for x in open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()])[0]
        yield p.pid, child
    finally:
        for pid in (locals().get("child"), p.pid):
            if pid:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        p.wait()
        p.stdout.close()


def _huge_rows(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*) FROM buffers WHERE kind = 'memfd' AND name LIKE 'huge%'").fetchone()[0]
    finally:
        con.close()


def test_huge_memfds_through_record_report_trace_plot(tmp_path, holders):
    a, b = holders
    pids = f"{a},{b}"
    live = run_memtrack("--json", "-p", pids, "-q")
    assert live.returncode == 0, live.stderr
    doc = json.loads(live.stdout)
    expect = {p["pid"]: p["totals"] for p in doc["processes"]}
    assert sorted(expect) == sorted(holders)
    for p in expect.values():                       # held twice: each buffer split to the byte
        assert p["rss"] == 3 * HUGE > U64
    assert sum(p["pss"] for p in expect.values()) == 3 * HUGE

    db = str(tmp_path / "h.db")
    for _ in range(2):                              # a second run reopens what the first stored
        r = run_memtrack("record", "-o", db, "-i", "0.1", "-n", "3", "-p", pids, "-q")
        assert r.returncode == 0, r.stderr
    assert _huge_rows(db) == 3                      # read back equal: interned once, not per run

    h = load(db)
    assert sorted(x.size for x in h.buffers.values() if (x.name or "").startswith("huge")) == [HUGE] * 3
    rep = run_memtrack("report", db, "--json")
    assert rep.returncode == 0, rep.stderr
    procs = {p["pid"]: p for p in json.loads(rep.stdout)["processes"]}
    for pid, p in expect.items():
        assert procs[pid]["pss"]["peak"] == procs[pid]["pss"]["end"] == p["pss"]
        assert procs[pid]["rss"]["peak"] == 3 * HUGE and procs[pid]["pss"]["growth"] == 0
    cats = json.loads(rep.stdout)["categories"]
    assert sum(c["bytes"]["end"] for c in cats) == 3 * HUGE
    assert analyze(h)["snapshots"] == 6
    text = run_memtrack("report", db, "--bytes")
    assert text.returncode == 0 and str(3 * HUGE) in text.stdout

    tr = run_memtrack("export-trace", db, "-o", "-", "-q")
    assert tr.returncode == 0, tr.stderr
    counters = [e for e in json.loads(tr.stdout)["traceEvents"]
                if e["ph"] == "C" and e["name"] == "shared memory"]
    assert {e["pid"]: e["args"]["pss"] for e in counters} == {pid: p["pss"] for pid, p in expect.items()}

    r = run_memtrack("plot", db, "-o", str(tmp_path / "p.png"), "-q")
    if "matplotlib" not in r.stderr:
        assert r.returncode == 0, r.stderr
        assert os.path.getsize(tmp_path / "p.png") > 0


def test_huge_numbers_in_a_recorder_kept_open(tmp_path, holders):
    """A long-running recorder meets the huge memfds mid-run and keeps going."""
    db = str(tmp_path / "h.db")
    rec = Recorder(db)
    try:
        rec.add(_live(holders))
        rec.add(_live(holders))
    finally:
        rec.close()
    h = load(db)
    assert len(h) == 2 and max(h.held) >= 3 * HUGE


def _live(pids):
    r = run_memtrack("--json", "-p", ",".join(map(str, pids)), "-q")
    return from_dict(json.loads(r.stdout))


def _tree(freed: bool = False) -> Tree:
    t = Tree()
    t.proc(100, "sf").dmabuf(3, 5, U64, "system", "fb0", count=2)
    cam = t.proc(101, "cam").dmabuf(3, 5, U64, "system", "fb0", count=2)
    if not freed:
        cam.dmabuf(4, 6, U64, "system", "x")
        t.sysfs_buffer(6, U64, "system")
    t.sysfs_buffer(5, U64, "system").sysfs_buffer(7, U64, "ion")
    return t


def test_u64_dmabufs_through_json_diff_textfile_and_history(tmp_path):
    a = _tree().write_dir(str(tmp_path / "a"))
    b = _tree(freed=True).write_dir(str(tmp_path / "b"))
    out = run_memtrack("--root", a, "--json", "-q")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["kernel"]["held_bytes"] == 2 * U64 and doc["kernel"]["kernel_only_bytes"] == U64
    assert {p["pid"]: (p["totals"]["rss"], p["totals"]["pss"]) for p in doc["processes"]} == {
        100: (U64, 2 ** 63), 101: (2 * U64, 2 ** 63 - 1 + U64)}
    ja = tmp_path / "a.json"
    ja.write_text(out.stdout)
    again = run_memtrack("--root", str(ja), "--json", "-q")           # back through the reader
    assert again.returncode == 0 and json.loads(again.stdout) == doc

    jb = tmp_path / "b.json"
    jb.write_text(run_memtrack("--root", b, "--json", "-q").stdout)
    d = run_memtrack("diff", str(ja), str(jb), "--json")
    assert d.returncode == 0, d.stderr
    dd = json.loads(d.stdout)
    assert dd["totals"]["held_bytes"]["a"] == 2 * U64 and dd["totals"]["held_bytes"]["b"] == U64
    assert [x["size"] for x in dd["buffers"]["freed"]] == [U64]
    assert run_memtrack("diff", str(ja), str(jb)).returncode == 0

    prom = tmp_path / "m.prom"
    r = run_memtrack("textfile", "--root", str(ja), "-o", str(prom), "-q")
    assert r.returncode == 0, r.stderr
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in prom.read_text().splitlines() if line and not line.startswith("#")}
    assert values["memtrack_held_bytes"] == float(2 * U64)
    assert values["memtrack_dmabuf_exported_bytes"] == float(3 * U64) > 0

    db = str(tmp_path / "h.db")
    rec = Recorder(db)
    try:
        for i, tree in enumerate((a, a, b, a)):
            rec.add(memtrack.scan(tree), t=1e9 + i)
    finally:
        rec.close()
    h = load(db)
    assert h.held == [2 * U64, 2 * U64, U64, 2 * U64] and h.kernel_only == [U64] * 4
    rep = run_memtrack("report", db, "--json")
    assert rep.returncode == 0, rep.stderr
    procs = {p["pid"]: p for p in json.loads(rep.stdout)["processes"]}
    assert procs[101]["rss"]["peak"] == 2 * U64 and procs[101]["rss"]["start"] == 2 * U64
    assert json.loads(rep.stdout)["kernel_only"]["peak"] == U64
    tr = run_memtrack("export-trace", db, "-o", "-", "-q")
    assert tr.returncode == 0, tr.stderr
    ko = [e["args"]["bytes"] for e in json.loads(tr.stdout)["traceEvents"] if e["name"] == "kernel-only"]
    assert ko == [U64]
    r = run_memtrack("plot", db, "-o", str(tmp_path / "p.svg"), "--by", "category", "-q")
    if "matplotlib" not in r.stderr:
        assert r.returncode == 0, r.stderr
