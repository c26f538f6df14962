"""Nothing lost: a writer killed with SIGKILL at a random point leaves the old file or the
new complete one, never a part, and the file is always readable by `memtrack --root`.

Each writer runs in a forked child (no interpreter start-up, so 50 writes stay quick); the
parent kills it after a random delay drawn around the time one write takes, and lets every
fifth one finish so new versions do land. Writers: the capture archive, a JSON snapshot, the
Prometheus textfile and the SQLite history (which grows in place: it must stay intact)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from typing import Callable, NamedTuple

import pytest

import memtrack
from memtrack.cli import main
from kfixture import Tree
from livehelpers import run_memtrack

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
WRITES = 50


class Writer(NamedTuple):
    write: Callable[[str, int], None]     # in the child: write version i to path
    read: Callable[[str], object]         # in the parent: load it (raises if unreadable)
    suffix: str = ".json"
    snapshot: bool = True                 # `memtrack --root` reads it


@pytest.fixture(scope="module")
def big_fixture(tmp_path_factory):
    """An archive of 80 processes sharing memfds: a JSON snapshot of ~100 KB."""
    t = Tree()
    for pid in range(100, 180):
        p = t.proc(pid, f"app{pid}")
        for n in range(4):
            p.memfd(3 + n, f"pool{(pid + n) % 50}", 1000 + (pid + n) % 50, 4096 * (1 + n))
    return t.write_tar(str(tmp_path_factory.mktemp("nl") / "big.tgz"))


def _read_archive(path):
    snap = memtrack.scan(path)
    bad = [n for n in snap.notes if "truncated" in n or "corrupt" in n]
    assert not bad, bad
    return snap


def writers(big):
    return {
        "capture-archive": Writer(
            write=lambda path, i: main(["capture", "-o", path, "-q", "-p", str(os.getppid())]),
            read=_read_archive),
        "json-snapshot": Writer(
            # -p changes with i, so each version differs from the one before
            write=lambda path, i: main(["--root", big, "--json", "-q", "-p", str(100 + i % 80), "-o", path]),
            read=memtrack.load),
        "prometheus-textfile": Writer(
            write=lambda path, i: main(["--root", big, "textfile", "-q", "-p", str(100 + i % 80), "-o", path]),
            read=_read_textfile, suffix=".prom", snapshot=False),
        "history-sqlite": Writer(
            # one more snapshot of this machine per write (record watches live machines only)
            write=lambda path, i: main(["record", "-q", "-n", "1", "-i", "0", "--backend", "procfs",
                                        "-p", str(os.getppid()), "-o", path]),
            read=_read_history, suffix=".db", snapshot=False),
    }


def _read_textfile(path):
    """Complete: every metric family the exporter writes is there, and it parses."""
    from prometheus_client.parser import text_string_to_metric_families
    with open(path) as f:
        text = f.read()
    names = {fam.name for fam in text_string_to_metric_families(text)}
    assert {"memtrack_buffer_bytes", "memtrack_scrape_skipped_processes"} <= names, names
    assert text.endswith("\n")


def _read_history(path):
    import sqlite3
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = con.execute("SELECT count(*) FROM snapshots").fetchone()[0]
    finally:
        con.close()
    r = run_memtrack("report", path, "-q")
    assert r.returncode == 0, r.stderr
    return n


def _run_child(fn) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            code = fn() or 0
        finally:
            os._exit(code)
    return pid


@pytest.mark.parametrize("name", ["capture-archive", "json-snapshot", "prometheus-textfile", "history-sqlite"])
def test_kill_9_at_random_points_leaves_old_or_new(tmp_path, big_fixture, name):
    w = writers(big_fixture)[name]
    if name == "prometheus-textfile":
        pytest.importorskip("prometheus_client")
    path = str(tmp_path / ("out.tar.gz" if "archive" in name else "out" + w.suffix))
    # a first complete version, and how long one write takes
    t0 = time.monotonic()
    pid = _run_child(lambda: w.write(path, 0))
    _, status = os.waitpid(pid, 0)
    took = time.monotonic() - t0
    assert os.waitstatus_to_exitcode(status) == 0
    w.read(path)
    with open(path, "rb") as f:
        current = f.read()
    rng = random.Random(7)
    killed = finished = changed = 0
    for i in range(1, WRITES + 1):
        pid = _run_child(lambda: w.write(path, i))
        if i % 5:
            time.sleep(rng.uniform(0, took * 1.2))
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            killed += 1
        else:
            assert os.waitstatus_to_exitcode(status) == 0
            finished += 1
        with open(path, "rb") as f:
            now = f.read()
        if now != current:
            w.read(path)                  # a new version: complete and readable
            changed += 1
            current = now
        else:
            w.read(path)
    assert finished >= WRITES // 5 and changed >= 1
    if name == "history-sqlite":
        # a database grows in place: every finished write added its snapshot, none was torn
        assert w.read(path) >= 1 + finished
        return
    if w.snapshot:
        r = run_memtrack("--root", path, "--json", "-q")
        assert r.returncode == 0 and r.stdout.startswith("{"), r.stderr
    # a killed writer's temp file stays beside the target (nothing can remove it at SIGKILL):
    # it never takes the target's name, memtrack never reads it, and the next writer of the
    # target removes it: at most the last killed writer's is left, and one more write clears it
    leftovers = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert all(f.startswith("." + os.path.basename(path) + ".") for f in leftovers)
    assert len(leftovers) <= 1, leftovers
    pid = _run_child(lambda: w.write(path, WRITES + 1))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_output_option_writes_atomically_and_reads_back(tmp_path, big_fixture, capsys):
    out = tmp_path / "snap.json"
    assert main(["--root", big_fixture, "--json", "-q", "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    snap = memtrack.load(str(out))
    assert snap == memtrack.categorize(memtrack.scan(big_fixture))   # the CLI applies the rules
    csv = tmp_path / "t.csv"
    assert main(["--root", big_fixture, "--csv", "-q", "-o", str(csv)]) == 0
    assert csv.read_text().startswith("pid,rss,pss")
    # an unwritable target: one line, exit 2, the old file untouched
    rc = main(["--root", big_fixture, "--json", "-q", "-o", str(tmp_path / "no" / "such" / "dir.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "No such file" in err


def test_output_to_a_device_a_fifo_or_a_symlink_replaces_no_node(tmp_path, big_fixture, capsys):
    """-o /dev/null must not become a plain file (renaming over it did, as root); a FIFO is
    written to; a symlink stays a link and its file gets the snapshot, mode kept."""
    import stat
    import threading
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert main(["--root", big_fixture, "--json", "-q", "-o", str(null)]) == 0
    assert stat.S_ISCHR(os.stat(null).st_mode) and os.stat(null).st_rdev == os.makedev(1, 3)

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    assert main(["--root", big_fixture, "--json", "-q", "-o", str(fifo)]) == 0
    reader.join(10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert got[0].startswith(b"{") and got[0].rstrip().endswith(b"}")

    real = tmp_path / "real.json"
    real.write_text("old")
    os.chmod(real, 0o600)
    link = tmp_path / "link.json"
    os.symlink("real.json", link)
    assert main(["--root", big_fixture, "--json", "-q", "-o", str(link)]) == 0
    assert os.path.islink(link) and os.readlink(link) == "real.json"
    assert memtrack.load(str(real)) == memtrack.load(str(link))
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o600

    rc = main(["--root", big_fixture, "--json", "-q", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "directory" in err


def test_a_killed_writers_temp_file_is_removed_by_the_next_writer(tmp_path):
    from memtrack.util.atomic import _temp_prefix, atomic_write
    target = tmp_path / "out.json"
    prefix = _temp_prefix(str(target))
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        stale = tmp_path / f"{prefix}{dead.pid}.abc.tmp"
        running = tmp_path / f"{prefix}{alive.pid}.def.tmp"
        elsewhere = tmp_path / f".out.json.otherhost.{dead.pid}.ghi.tmp"
        for f in (stale, running, elsewhere):
            f.write_bytes(b"half a snapshot")
        atomic_write(str(target), b"{}")
        assert target.read_bytes() == b"{}"
        assert not stale.exists()                          # its writer is gone: removed
        assert running.exists() and elsewhere.exists()     # a live writer's, another host's
    finally:
        alive.kill()
        alive.wait()
