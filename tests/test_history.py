"""record / report: storage by spans, leak detection on real processes, crash safety."""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

from livehelpers import SRC, run_memtrack
from livekids import LOOP as LOOP_SRC, Loop, wait_for
from helpers.db import rows
from helpers.snapshots import MFD, snap

from memtrack.history import Recorder, analyze, load, trend


def test_unchanged_snapshots_cost_one_row_each(tmp_path):
    db = str(tmp_path / "h.db")
    s = snap({"memfd:10": dict(inode=10, size=4096, name="a", **MFD)}, {100: ("app", {"memfd:10": ([3], [])})})
    rec = Recorder(db)
    for i in range(50):
        rec.add(s, t=1000.0 + i)
    rec.close()
    assert rows(db, "snapshots") == 50
    for table in ("buffers", "processes", "refs", "buffer_spans", "ref_spans", "usage_spans", "category_spans"):
        assert rows(db, table) == 1, table
    h = load(db)
    assert len(h) == 50 and h.holds[0].first == 0 and h.holds[0].last == 49 and h.holds[0].open_at_end


def test_changes_close_and_open_spans_and_restart_closes_open_ones(tmp_path):
    db = str(tmp_path / "h.db")
    one = snap({"memfd:10": dict(inode=10, size=4096, name="a", **MFD)}, {100: ("app", {"memfd:10": ([3], [])})})
    two = snap({"memfd:10": dict(inode=10, size=4096, name="a", **MFD),
                "memfd:11": dict(inode=11, size=4096, name="b", **MFD)},
               {100: ("app", {"memfd:10": ([3], []), "memfd:11": ([4], [])})})
    rec = Recorder(db)
    for i, s in enumerate([one, one, two, two, one]):
        rec.add(s, t=float(i))
    rec.close()
    h = load(db)
    by_buf = {h.buffers[x.buffer].name: (x.first, x.last, x.open_at_end) for x in h.holds}
    assert by_buf == {"a": (0, 4, True), "b": (2, 3, False)}
    proc = next(iter(h.usage))
    assert h.series(h.usage[proc], 0) == [4096, 4096, 8192, 8192, 4096]       # rss
    assert h.series(h.usage[proc], 3) == [1, 1, 2, 2, 1]                      # buffers
    # a second run appends; what the first left open ended at its last snapshot
    rec = Recorder(db)
    rec.add(one, t=10.0)
    rec.close()
    h = load(db)
    assert h.runs == 2 and len(h) == 6
    a_holds = sorted((x.first, x.last) for x in h.holds if h.buffers[x.buffer].name == "a")
    assert a_holds == [(0, 5)]          # adjacent spans of the same hold join up


def test_trend_tells_steady_growth_from_churn():
    t = [float(i) for i in range(10)]
    assert trend(t, [i * 4096 for i in range(10)]).steady_growth
    assert not trend(t, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]).steady_growth
    assert not trend(t, [5] * 10).steady_growth
    assert not trend(t, [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]).steady_growth      # gave it all back once


def _record(db, pids, n, interval="0.1"):
    r = run_memtrack("record", "-o", db, "-i", interval, "-n", str(n), "-p", ",".join(map(str, pids)), "-q")
    assert r.returncode == 0, r.stderr
    return r


def test_report_flags_the_leaker_not_the_churner(tmp_path):
    db = str(tmp_path / "h.db")
    with Loop("leak", 0.2) as leak, Loop("churn", 0.2) as churn:
        _record(db, [leak.pid, churn.pid], 30)
    r = run_memtrack("report", db, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["snapshots"] == 30
    suspects = {(s["kind"], s["evidence"].get("pid")) for s in doc["suspects"]}
    assert ("growth", leak.pid) in suspects
    assert ("unreleased", leak.pid) in suspects
    assert not any(pid == churn.pid for _, pid in suspects), doc["suspects"]
    growth = [s for s in doc["suspects"] if s["kind"] == "growth" and s["evidence"].get("pid") == leak.pid]
    assert all(s["evidence"]["slope_per_s"] > 0 for s in growth)
    assert {s["evidence"]["metric"] for s in growth} == {"held bytes", "buffer count"}
    procs = {p["pid"]: p for p in doc["processes"]}
    assert procs[leak.pid]["buffers"]["end"] > procs[leak.pid]["buffers"]["start"] >= 1
    assert procs[churn.pid]["buffers"]["peak"] == 1
    text = run_memtrack("report", db)
    assert text.returncode == 0 and f"growth: pid {leak.pid}" in text.stdout
    assert f"pid {churn.pid} " not in text.stdout.split("suspected leaks")[1]


def _start_recorder(db, env):
    """(popen to wait on, pid to signal, leak pid as the recorder sees it or None).

    Where possible the recorder runs in a pid namespace of its own with just a leaking child:
    its scans then cost about as little as its writes, so a stop lands inside a write
    transaction within a few tries instead of thousands."""
    import shlex
    import shutil
    py = shlex.quote(sys.executable)
    leak = f"{py} -c {shlex.quote(LOOP_SRC)} leak 0.02 >/dev/null"
    if os.geteuid() == 0 and shutil.which("unshare"):
        script = f"{leak} & exec {py} -m memtrack record -o {shlex.quote(db)} -i 0 -q"
        outer = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script],
                                 env=env, stderr=subprocess.PIPE)
        try:
            kids = wait_for(lambda: _children(outer.pid))
            return outer, kids[0], None
        except AssertionError:
            outer.kill()
            outer.wait()
    lp = Loop("leak", 0.02)
    rec = subprocess.Popen([sys.executable, "-m", "memtrack", "record", "-o", db, "-i", "0",
                            "-p", str(lp.pid), "-q"], env=env, stderr=subprocess.PIPE)
    rec.loop = lp
    return rec, rec.pid, lp.pid


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def test_recorder_killed_mid_write_leaves_a_readable_history(tmp_path):
    db = str(tmp_path / "h.db")
    env = dict(os.environ, PYTHONPATH=SRC)
    proc, target, leak_pid = _start_recorder(db, env)
    try:
        wait_for(lambda: os.path.exists(db) and _committed(db) >= 3)
        caught = False
        tries = 0
        end = time.monotonic() + 120              # a guard only
        while time.monotonic() < end:
            tries += 1
            os.kill(target, signal.SIGSTOP)
            # a stopped recorder that holds the write lock is inside a transaction
            con = sqlite3.connect(db, timeout=0, isolation_level=None)
            try:
                con.execute("BEGIN IMMEDIATE")
                con.execute("ROLLBACK")
            except sqlite3.OperationalError:
                caught = True
            finally:
                con.close()
            if caught:
                before = _committed(db)
                os.kill(target, signal.SIGKILL)
                break
            os.kill(target, signal.SIGCONT)
            time.sleep(random.uniform(0, 0.002))    # stop it at varied points of its loop
        assert caught, "never stopped the recorder inside a write transaction"
    finally:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        proc.stderr.close()
        if getattr(proc, "loop", None):
            proc.loop.stop()
    print(f"caught inside a write transaction after {tries} tries")
    r = run_memtrack("report", db, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    # the snapshot in progress is gone, or whole if its commit record had reached the WAL
    # (killed between writing it and publishing it); nothing before it is lost
    assert doc["snapshots"] in (before, before + 1)
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = con.execute("SELECT count(*) FROM snapshots").fetchone()[0]
        # every span starts at a recorded snapshot: no half-written snapshot left rows behind
        for table in ("buffer_spans", "ref_spans", "usage_spans", "category_spans"):
            assert con.execute(f"SELECT count(*) FROM {table} WHERE first NOT IN "
                               "(SELECT id FROM snapshots)").fetchone()[0] == 0
    finally:
        con.close()
    assert n == doc["snapshots"]
    leakers = [p for p in doc["processes"] if leak_pid in (None, p["pid"])]
    assert leakers and max(p["buffers"]["peak"] for p in leakers) >= 1
    # and recording can go on in the same file
    rec2 = run_memtrack("record", "-o", db, "-i", "0", "-n", "2", "-p", str(os.getpid()), "-q")
    assert rec2.returncode == 0, rec2.stderr
    assert json.loads(run_memtrack("report", db, "--json").stdout)["runs"] == 2


def _committed(db):
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM snapshots").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_report_bad_inputs_are_one_line(tmp_path):
    notdb = tmp_path / "x.db"
    notdb.write_bytes(b"hello, not sqlite" * 100)
    other = str(tmp_path / "other.db")
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t(x)")
    con.commit()
    con.close()
    future = str(tmp_path / "future.db")
    Recorder(future).close()
    con = sqlite3.connect(future)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    con.commit()
    con.close()
    for path, word in ((str(tmp_path / "missing.db"), "no such file"), (str(notdb), "not"),
                       (other, "not a memtrack history"), (future, "schema 99"),
                       (str(tmp_path / "empty.db"), None)):
        if word is None:
            Recorder(path).close()
            word = "no snapshots"
        r = run_memtrack("report", path)
        assert r.returncode == 2, (path, r.stderr)
        assert word in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_analyze_sysv_unattached_and_kernel_only_growth(tmp_path):
    db = str(tmp_path / "h.db")
    rec = Recorder(db)
    from dataclasses import replace
    for i in range(6):
        bufs = {"sysv:7": dict(kind="sysv", inode=7, size=1 << 20, name="0x0000abcd", kernel_count=0)}
        for j in range(i):        # dma-bufs nobody holds, one more each time
            bufs[f"dmabuf:{100 + j}"] = dict(kind="dmabuf", inode=100 + j, size=4096, exporter="system")
        s = snap(bufs, {})
        s = replace(s, kernel=replace(s.kernel, dmabuf_source="debugfs"))
        rec.add(s, t=float(i))
    rec.close()
    doc = analyze(load(db))
    kinds = {f["kind"]: f for f in doc["suspects"]}
    assert kinds["sysv-unattached"]["evidence"]["shmid"] == 7
    assert kinds["sysv-unattached"]["evidence"]["size"] == 1 << 20
    assert kinds["kernel-only-growth"]["evidence"]["end"] == 5 * 4096 + (1 << 20)


def test_record_p_stores_only_those_processes_but_pss_counts_every_holder(tmp_path):
    db = str(tmp_path / "h.db")
    fd = os.memfd_create("shared-rec", 0)
    os.ftruncate(fd, 65536)
    kids = [subprocess.Popen(["sleep", "60"], pass_fds=(fd,)) for _ in range(2)]
    os.close(fd)
    try:
        _record(db, [kids[0].pid], 2, interval="0")
    finally:
        for k in kids:
            k.kill()
            k.wait()
    doc = json.loads(run_memtrack("report", db, "--json").stdout)
    assert [p["pid"] for p in doc["processes"]] == [kids[0].pid]
    p = doc["processes"][0]
    assert p["rss"]["peak"] == 65536 and p["pss"]["peak"] == 32768 and p["buffers"]["peak"] == 1


def test_record_stops_at_duration_and_on_sigterm(tmp_path):
    db = str(tmp_path / "d.db")
    r = run_memtrack("record", "-o", db, "-i", "0.05", "--duration", "300ms", "-p", str(os.getpid()))
    assert r.returncode == 0, r.stderr
    n = rows(db, "snapshots")
    assert 2 <= n <= 7 and f"recorded {n} snapshots" in r.stderr
    db2 = str(tmp_path / "t.db")
    p = subprocess.Popen([sys.executable, "-m", "memtrack", "record", "-o", db2, "-i", "0.05", "-q"],
                         env=dict(os.environ, PYTHONPATH=SRC), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.path.exists(db2) and _committed(db2) >= 2)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
        assert "Traceback" not in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stderr.close()
    assert not os.path.exists(db2 + "-wal") or os.path.getsize(db2 + "-wal") == 0   # checkpointed on exit
    assert _committed(db2) >= 2


def test_record_bad_arguments(tmp_path):
    r = run_memtrack("record", "-o", str(tmp_path / "x.db"), "--duration", "soon")
    assert r.returncode == 2 and "not a duration" in r.stderr
    r = run_memtrack("record", "-o", str(tmp_path / "nodir" / "x.db"), "-n", "1")
    assert r.returncode == 2 and "does not exist" in r.stderr and r.stderr.count("\n") == 1
    notdb = tmp_path / "x.txt"
    notdb.write_text("not a database at all, just text " * 50)
    r = run_memtrack("record", "-o", str(notdb), "-n", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_one_recorder_per_file(tmp_path):
    db = str(tmp_path / "h.db")
    first = Recorder(db)
    try:
        r = run_memtrack("record", "-o", db, "-n", "1")
        assert r.returncode == 2 and "another `memtrack record`" in r.stderr and r.stderr.count("\n") == 1
    finally:
        first.close()
    r = run_memtrack("record", "-o", db, "-n", "1", "-i", "0", "-q")
    assert r.returncode == 0, r.stderr


def test_unchanged_fast_path_writes_the_same_as_the_full_path(tmp_path):
    """The same Snapshot object again takes the one-row path; an equal copy the full one: the
    two databases must read back the same."""
    from dataclasses import replace as dreplace
    s = snap({"memfd:10": dict(inode=10, size=4096, name="a", **MFD)}, {100: ("app", {"memfd:10": ([3], [])})})
    other = snap({}, {})
    dbs = []
    for same_object in (True, False):
        db = str(tmp_path / f"h{same_object}.db")
        rec = Recorder(db)
        seq = [s, s, s, other, s] if same_object else [s, dreplace(s), dreplace(s), other, dreplace(s)]
        for i, x in enumerate(seq):
            rec.add(x, t=float(i))
        rec.close()
        h = load(db)
        dbs.append(([(x.first, x.last) for x in h.holds], {k: v for k, v in h.usage.items()},
                    h.held, len(h)))
    assert dbs[0] == dbs[1]
    assert dbs[0][0] == [(0, 2), (4, 4)] and dbs[0][2] == [4096, 4096, 4096, 0, 4096]


def test_a_long_record_under_churn_keeps_few_rows_in_memory(tmp_path):
    """A process that comes and goes each snapshot, each with a memfd of its own: the
    recorder's row caches hold the last snapshot's rows and at most CACHE_SLACK more (they
    kept every row ever written: ~1 KB a process, 90 MB in 10 minutes at 150 forks/s), and
    what stays is still one row and one span."""
    db = str(tmp_path / "h.db")
    rec = Recorder(db)
    rec.CACHE_SLACK = 16
    for i in range(200):
        s = snap({"memfd:10": dict(inode=10, size=4096, name="a", **MFD),
                  f"memfd:{1000 + i}": dict(inode=1000 + i, size=4096, name="churn", **MFD)},
                 {100: ("app", {"memfd:10": ([3], [])}),
                  5000 + i: ("churn", {f"memfd:{1000 + i}": ([3], [])})})
        rec.add(s, t=float(i))
        assert max(len(rec._buffers), len(rec._procs), len(rec._refs)) <= 2 + 16
    rec.close()
    assert rows(db, "buffers") == 201 and rows(db, "processes") == 201 and rows(db, "refs") == 201
    h = load(db)
    a = [(x.first, x.last) for x in h.holds if h.buffers[x.buffer].name == "a"]
    assert len(h) == 200 and a == [(0, 199)]
