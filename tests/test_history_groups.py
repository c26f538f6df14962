"""record / report per group: each process's cgroup is recorded, and report --by finds a leak
per unit, container, pod or cgroup, a group accounted as one holder (as ps --group does)."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import replace

import pytest

from livehelpers import run_memtrack
from helpers.snapshots import MFD, snap
from helpers.cgroups import Cgroups

from memtrack.groups import account_groups
from memtrack.history import Recorder, load

A = "/system.slice/a.service"
B = "/system.slice/b.service"
KiB = 1024
MiB = 1 << 20


def _unit_snapshot(k):
    """a.service (two cgroups: its main one and a child) holds k memfds that grow with k, and
    shares one of 10001 bytes with b.service (split between the two units, the odd byte to a)."""
    bufs = {f"memfd:{i}": dict(inode=i, size=4096 * i, name=f"m{i}", allocated=4096 * i, **MFD)
            for i in range(1, k + 1)}
    bufs["memfd:99"] = dict(inode=99, size=10001, name="shared", allocated=12288, **MFD)
    s = snap(bufs, {100: ("a", {**{f"memfd:{i}": ([3 + i], []) for i in range(1, k + 1)},
                                "memfd:99": ([2], [])}),
                    101: ("a2", {"memfd:99": ([2], [])}),
                    200: ("b", {"memfd:99": ([2], [])})})
    cg = {100: A + "/worker", 101: A, 200: B}
    return replace(s, processes=tuple(replace(p, cgroup=cg[p.pid]) for p in s.processes))


def test_report_by_unit_finds_the_growing_unit_to_the_byte(tmp_path):
    from memtrack.history.analysis import group_spans
    db = str(tmp_path / "h.db")
    snaps = [_unit_snapshot(k) for k in range(1, 8)]
    rec = Recorder(db)
    for i, s in enumerate(snaps):
        rec.add(s, t=1000.0 + i)
    rec.close()
    h = load(db)
    # one row per process while it stays in its cgroup
    assert sorted(cg for spans in h.cgroups.values() for _, _, cg in spans) == sorted([A + "/worker", A, B])
    # every snapshot's group figures are groups.account_groups' of the snapshot recorded
    for by in ("unit", "cgroup"):
        spans, _ = group_spans(h, by)
        for i, s in enumerate(snaps):
            acct = account_groups(s, by)
            got = {g: h.series(v, 0)[i] for g, v in spans.items()}
            assert got == {g: u.pss for g, u in acct.groups.items()}, (by, i)
            got = {g: h.series(v, 3)[i] for g, v in spans.items()}
            assert got == {g: u.mem for g, u in acct.groups.items()}, (by, i)
    r = run_memtrack("report", db, "--by", "unit", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    groups = {g["group"]: g for g in doc["groups"]["groups"]}
    assert doc["groups"]["by"] == "unit" and set(groups) == {"a.service", "b.service"}
    a, b = groups["a.service"], groups["b.service"]
    grown = sum(4096 * i for i in range(2, 8))
    assert (a["pss"]["start"], a["pss"]["end"]) == (4096 + 5001, 4096 * 28 + 5001)
    assert a["pss"]["growth"] == grown and a["mem"]["growth"] == grown
    assert a["buffers"]["start"] == 2 and a["buffers"]["end"] == 8 and a["pids"] == [100, 101]
    assert b["pss"]["growth"] == 0 and b["pss"]["end"] == 5000 and b["pids"] == [200]
    leaks = {(s["evidence"].get("group"), s["evidence"]["metric"]): s for s in doc["suspects"]
             if s["evidence"].get("by") == "unit"}
    assert set(leaks) == {("a.service", "held bytes"), ("a.service", "buffer count")}
    assert leaks["a.service", "held bytes"]["evidence"]["growth"] == grown
    assert leaks["a.service", "held bytes"]["subject"] == "unit a.service"
    text = run_memtrack("report", db, "--by", "unit")
    assert text.returncode == 0, text.stderr
    assert "groups by unit" in text.stdout and "growth: unit a.service: held bytes grew" in text.stdout
    assert "unit b.service" not in text.stdout
    # without --by the report is what it was
    assert "groups" not in json.loads(run_memtrack("report", db, "--json").stdout)


def test_a_move_keeps_the_process_one_row_and_the_group_follows_it(tmp_path):
    from memtrack.history.analysis import group_spans
    db = str(tmp_path / "h.db")
    one = _unit_snapshot(3)
    moved = replace(one, processes=tuple(replace(p, cgroup=B) if p.pid == 101 else p for p in one.processes))
    rec = Recorder(db)
    for i, s in enumerate([one, one, moved, moved]):
        rec.add(s, t=float(i))
    rec.close()
    h = load(db)
    assert len(h.usage) == 3                       # the per-process series is not split
    spans, pids = group_spans(h, "unit")
    for i, s in enumerate([one, one, moved, moved]):
        assert {g: h.series(v, 0)[i] for g, v in spans.items()} == \
            {g: u.pss for g, u in account_groups(s, "unit").groups.items()}
    assert pids["b.service"] == {101, 200}


def test_an_older_history_loads_and_report_by_says_why_not(tmp_path):
    db = str(tmp_path / "h.db")
    rec = Recorder(db)
    rec.add(_unit_snapshot(2), t=1.0)
    rec.close()
    con = sqlite3.connect(db)
    con.execute("DROP TABLE cgroup_spans")          # as a memtrack before cgroups wrote it
    con.commit()
    con.close()
    h = load(db)
    assert h.cgroups is None and len(h.usage) == 3
    r = run_memtrack("report", db, "--by", "pod")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "recorded without cgroups" in r.stderr
    assert run_memtrack("report", db).returncode == 0
    # a recorder appending to it adds the table: its processes have cgroups from then on
    rec = Recorder(db)
    rec.add(_unit_snapshot(2), t=2.0)
    rec.close()
    h = load(db)
    assert all(spans == [(1, 1, spans[0][2])] for spans in h.cgroups.values())


def test_a_cgroup_span_ends_with_its_run_when_an_older_recorder_appended(tmp_path):
    db = str(tmp_path / "h.db")
    rec = Recorder(db)
    for i in range(3):
        rec.add(_unit_snapshot(2), t=float(i))
    rec.close()
    # an older memtrack's run: it knows nothing of cgroup_spans and leaves them open
    con = sqlite3.connect(db)
    run = con.execute("INSERT INTO runs(started, interval) VALUES (10, 1)").lastrowid
    for t in (10.0, 11.0):
        con.execute("INSERT INTO snapshots(run, t, complete, held_bytes, kernel_only_bytes) "
                    "VALUES (?, ?, 1, 0, 0)", (run, t))
    con.commit()
    con.close()
    h = load(db)
    assert len(h) == 5
    assert {spans[-1][1] for spans in h.cgroups.values()} == {2}


GROWER = r"""
import os, sys
fd = os.memfd_create("mt-grpleak", 0)
print(os.getpid(), fd, flush=True)
for line in sys.stdin:
    os.ftruncate(fd, int(line))
    print("ok", flush=True)
"""


class Grower:
    def __init__(self):
        self.p = subprocess.Popen([sys.executable, "-c", GROWER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pid, self.fd = map(int, self.p.stdout.readline().split())

    def size(self, n):
        self.p.stdin.write(f"{n}\n")
        self.p.stdin.flush()
        assert self.p.stdout.readline().strip() == "ok"

    def stop(self):
        self.p.kill()
        self.p.wait()
        self.p.stdin.close()
        self.p.stdout.close()


@pytest.mark.requires_root("making cgroups and moving processes need root")
def test_record_and_report_a_growing_unit_on_the_live_kernel(tmp_path):
    """A process in a unit cgroup the test makes grows its memfd, which a process of another
    unit holds too, between snapshots each `memtrack record` stores: the leaking unit is
    reported with its half of the growth, to the byte (the memfd is split between the two
    units, each one holder)."""
    db = str(tmp_path / "h.db")
    tag = uuid.uuid4().hex[:8]
    cg = Cgroups()
    kids = []
    try:
        leak = cg.make(f"system.slice/mt-grpleak-{tag}.service")
        other = cg.make(f"system.slice/docker-{tag * 8}.scope")
        g = Grower()
        kids.append(g)
        cg.move(g.pid, leak)
        # the other unit's process holds the same memfd (opened through /proc) as its stdin
        with open(f"/proc/{g.pid}/fd/{g.fd}", "rb") as f:
            holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], stdin=f)
        kids.append(holder)
        cg.move(holder.pid, other)
        pids = f"{g.pid},{holder.pid}"
        sizes = [MiB * k + 2 * k + 1 for k in range(1, 7)]     # odd sizes: the split to the byte
        for n in sizes:
            g.size(n)
            r = run_memtrack("record", "-o", db, "-n", "1", "-p", pids, "-q")
            assert r.returncode == 0, r.stderr
        r = run_memtrack("report", db, "--by", "unit", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        groups = {x["group"]: x for x in doc["groups"]["groups"]}
        unit = f"mt-grpleak-{tag}.service"
        assert set(groups) == {unit, f"docker-{tag * 8}.scope"}
        half = [n // 2 for n in sizes]          # the odd byte to the first name: docker-...
        assert groups[unit]["pss"]["start"] == half[0] and groups[unit]["pss"]["end"] == half[-1]
        assert groups[unit]["pss"]["growth"] == half[-1] - half[0]
        assert groups[unit]["rss"]["growth"] == sizes[-1] - sizes[0]
        assert groups[unit]["pids"] == [g.pid]
        leaks = [s for s in doc["suspects"] if s["evidence"].get("group") == unit
                 and s["evidence"]["metric"] == "held bytes"]
        assert len(leaks) == 1 and leaks[0]["evidence"]["growth"] == half[-1] - half[0]
        # by cgroup: the same figures under the paths the kernel gives
        r = run_memtrack("report", db, "--by", "cgroup", "--json")
        paths = {x["group"]: x for x in json.loads(r.stdout)["groups"]["groups"]}
        assert paths[leak]["pss"]["growth"] == half[-1] - half[0]
    finally:
        for k in kids:
            if isinstance(k, Grower):
                k.stop()
            else:
                k.kill()
                k.wait()
        cg.remove()
