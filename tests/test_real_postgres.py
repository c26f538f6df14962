"""PostgreSQL, the real server, against what /proc says (issue 14, "Done means"): its
shared_buffers segment (a shared anonymous mapping, huge_pages=off), its small SysV segment,
and the POSIX dynamic shared memory segments (/dev/shm/PostgreSQL.*) a parallel query shares
between its leader and two workers. Every figure expected is worked out by the test from
/proc (helpers/procfacts.py) and compared with a live scan, procfs and bpf backends.

One server for the module: initdb and start as the nobody user (postgres refuses root), in a
temporary directory, on a Unix socket only. Skipped where PostgreSQL is not installed."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from helpers.nobody import NOBODY
from helpers import procfacts
from memtrack.account import account

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
PORT = "54329"

pytestmark = [pytest.mark.skipif(not BIN, reason="PostgreSQL is not installed"),
              pytest.mark.requires_root(reason="postgres runs as nobody; map_files needs root")]


def children(pid):
    out = []
    for n in os.listdir("/proc"):
        if n.isdigit():
            try:
                with open(f"/proc/{n}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(n))
    return out


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_for(what, cond, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"PostgreSQL: {what} did not happen in {timeout:.0f} s")


@pytest.fixture(scope="module")
def pg():
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv")
    bindir = os.path.dirname(BIN[-1])
    d = tempfile.mkdtemp(prefix="memtrack-pg-")
    os.chmod(d, 0o755)
    os.chown(d, 65534, 65534)
    env = {"PATH": "/usr/bin:/bin", "HOME": d, "LC_ALL": "C"}
    run = dict(env=env, cwd=d, capture_output=True, text=True, timeout=120)
    r = subprocess.run(NOBODY + [f"{bindir}/initdb", "-D", f"{d}/data", "-A", "trust", "-U", "postgres",
                                 "--no-sync", "-E", "UTF8", "--locale=C"], **run)
    if r.returncode:
        shutil.rmtree(d, ignore_errors=True)
        pytest.skip(f"initdb failed: {r.stderr.strip()[-300:]}")
    server = subprocess.Popen(
        NOBODY + [f"{bindir}/postgres", "-D", f"{d}/data", "-k", d, "-p", PORT,
                  "-c", "listen_addresses=", "-c", "shared_buffers=16MB", "-c", "huge_pages=off",
                  "-c", "dynamic_shared_memory_type=posix", "-c", "autovacuum=off", "-c", "fsync=off",
                  "-c", "max_worker_processes=8", "-c", "max_parallel_workers=8"],
        env=env, cwd=d, stdout=subprocess.DEVNULL, stderr=open(f"{d}/log", "w"))
    query = None
    try:
        psql = NOBODY + [f"{bindir}/psql", "-h", d, "-p", PORT, "-U", "postgres", "-X", "-At", "-c"]
        wait_for("accepting connections",
                 lambda: subprocess.run(psql + ["select 1"], **run).stdout.strip() == "1")
        r = subprocess.run(psql + ["create table t as select g from generate_series(1, 20000) g; "
                                   "analyze t"], **run)
        assert r.returncode == 0, r.stderr
        # a parallel query held open: each participant sleeps on its first row
        query = subprocess.Popen(psql + [
            "set max_parallel_workers_per_gather = 2; set parallel_setup_cost = 0; "
            "set parallel_tuple_cost = 0; set min_parallel_table_scan_size = 0; "
            "select count(*) from t where pg_sleep(120) is not null"],
            env=env, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def workers():                      # setpriv execs postgres: server.pid is the postmaster
            ws = [k for k in children(server.pid) if "parallel worker for PID" in cmdline(k)]
            return ws if len(ws) == 2 else None
        ws = wait_for("two parallel workers", workers)
        postmaster = server.pid
        leader = int(cmdline(ws[0]).split("PID")[1].split()[0])
        all_pids = {postmaster, *children(postmaster)}
        yield {"postmaster": postmaster, "leader": leader, "workers": set(ws), "all": all_pids}
    finally:
        if query is not None:
            query.kill()
            query.wait()
        server.send_signal(signal.SIGINT)          # fast shutdown: removes its segments
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def compared(pg):
    return procfacts.compare(pg["all"])


def one(facts, kind, pred=lambda k, f: True):
    got = [(k, f) for k, f in facts.items() if k[0] == kind and pred(k, f)]
    assert got, f"no {kind} buffer"
    return got


def test_every_buffer_as_proc_says(compared, pg):
    """Every buffer a PostgreSQL process holds: holders, size (and allocated where this
    memtrack has it), fd and mapping counts; each process's rss."""
    for backend, expected, seen, snap in compared:
        assert seen == expected, backend
        acct = account(snap)
        for pid in pg["all"]:
            assert acct.process(pid).total.rss == procfacts.rss(expected, pid), (backend, pid)


def test_shared_buffers_segment(compared, pg):
    for backend, expected, seen, _ in compared:
        (key, fact), = one(expected, "shmem")
        assert fact.holders == pg["all"] and fact.size >= 16 << 20
        assert seen[key] == fact, backend


def test_sysv_segment(compared, pg):
    for backend, expected, seen, _ in compared:
        (key, fact), = one(expected, "sysv")
        assert fact.holders == pg["all"] and 0 < fact.size < 4096
        assert seen[key] == fact, backend


def test_parallel_query_dynamic_segments(compared, pg):
    """The DSM segments of the query: held by its leader and both workers, nobody else."""
    trio = {pg["leader"], *pg["workers"]}
    for backend, expected, seen, _ in compared:
        segs = one(expected, "shm", lambda k, f: f.holders == trio)
        for key, fact in segs:
            assert seen[key] == fact, backend
        # and the server-wide control segment every process maps
        (key, fact), = one(expected, "shm", lambda k, f: f.holders == pg["all"])
        assert seen[key] == fact, backend
