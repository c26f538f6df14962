"""Hostile stored data: names that are not UTF-8, damaged history contents, a history the
reader may not write to, rules files that are deep, endless or not files, output files the
caller may not replace."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

import pytest

from helpers.paths import REAL_CAPTURE
from helpers.nobody import NOBODY
from livehelpers import run_memtrack
from helpers.snapshots import MFD, snap
from helpers.db import rows as count

from memtrack.errors import MemtrackError, SourceError
from memtrack.history import Recorder, load

BAD_COMM = os.fsdecode(b"\xff\xfe\x1b[31mbad")
BAD_NAME = os.fsdecode(b"\xff\xfeinvalid\x1b]0;X\x07")


def one_line_error(r, *words):
    assert r.returncode not in (0, 70), (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def history(path, n=3, comm="app", name="a"):
    s = snap({"memfd:10": dict(inode=10, size=4096, name=name, **MFD)}, {100: (comm, {"memfd:10": ([3], [])})})
    rec = Recorder(str(path))
    for i in range(n):
        rec.add(s, t=1_700_000_000.0 + i)
    rec.close()
    return str(path)


def sql(db, *stmts):
    con = sqlite3.connect(db)
    try:
        for s in stmts:
            con.execute(s)
        con.commit()
    finally:
        con.close()


# -- names that are not UTF-8 -------------------------------------------------------------

def test_undecodable_names_round_trip_through_a_history(tmp_path):
    db = history(tmp_path / "h.db", comm=BAD_COMM, name=BAD_NAME)
    h = load(db)
    (p,) = h.processes.values()
    (b,) = h.buffers.values()
    assert p.comm == BAD_COMM and p.cmdline == BAD_COMM and b.name == BAD_NAME
    assert "\x1b" not in p.short and "\\xff" in p.short
    # a second run finds the same rows again: nothing stored twice
    history(db, comm=BAD_COMM, name=BAD_NAME)
    assert count(db, "processes") == 1 and count(db, "buffers") == 1
    r = run_memtrack("report", db)
    assert r.returncode == 0 and "\x1b" not in r.stdout and "\\xff\\xfe" in r.stdout, r.stderr


KID = r"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.prctl(15, b"\xff\xfe\x1b[31mbad", 0, 0, 0)                   # PR_SET_NAME
fd = os.memfd_create(os.fsdecode(b"\xff\xfeinvalid\x1b]0;X\x07"))
os.ftruncate(fd, 65536)
m = mmap.mmap(fd, 65536)
m[0:1] = b"x"
print(os.getpid(), flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc only")
def test_record_a_live_process_with_undecodable_names(tmp_path):
    kid = subprocess.Popen([sys.executable, "-c", KID], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(kid.stdout.readline())
        db = str(tmp_path / "h.db")
        r = run_memtrack("record", "-o", db, "-n", "2", "-i", "0.1", "-q", "-p", str(pid))
        assert r.returncode == 0, r.stderr
    finally:
        kid.stdin.close()
        kid.wait(timeout=30)
    h = load(db)
    assert [p.comm for p in h.processes.values()] == [BAD_COMM]
    assert BAD_NAME in [b.name for b in h.buffers.values()]
    for args in (["report", db], ["export-trace", db, "-o", str(tmp_path / "t.json")]):
        r = run_memtrack(*args)
        assert r.returncode == 0 and "\x1b" not in r.stdout + r.stderr, r.stderr
    assert "\x1b" not in (tmp_path / "t.json").read_text()


def test_a_failed_run_leaves_no_empty_run(tmp_path, monkeypatch):
    db = history(tmp_path / "h.db", n=2)                 # run 1, its spans still open
    rec = Recorder(db)
    s = snap({"memfd:11": dict(inode=11, size=8192, name="b", **MFD)}, {200: ("other", {"memfd:11": ([3], [])})})

    def broken(*args):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(rec, "_intern", broken)
    with pytest.raises(RuntimeError):
        rec.add(s, t=1_700_000_010.0)
    assert count(db, "runs") == 1 and count(db, "snapshots") == 2
    monkeypatch.undo()
    rec.add(s, t=1_700_000_011.0)                         # the same recorder goes on
    rec.close()
    assert count(db, "runs") == 2 and count(db, "snapshots") == 3
    h = load(db)
    assert h.runs == 2
    holds = {h.processes[x.process].comm: (x.first, x.last, x.open_at_end) for x in h.holds}
    assert holds == {"app": (0, 1, False), "other": (2, 2, True)}
    # a recorder that stores nothing leaves nothing either
    Recorder(db).close()
    assert count(db, "runs") == 2


def test_empty_runs_an_older_recorder_left_are_not_counted(tmp_path):
    db = history(tmp_path / "h.db")
    sql(db, "INSERT INTO runs(started) VALUES (1)", "INSERT INTO runs(started) VALUES (2)")
    assert load(db).runs == 1


def test_text_that_is_not_utf8_in_a_history_is_read_and_appended_to(tmp_path):
    db = history(tmp_path / "h.db")
    sql(db, "UPDATE processes SET comm = CAST(x'fffe1b5b33316d' AS TEXT)")
    h = load(db)
    assert next(iter(h.processes.values())).comm == "\udcff\udcfe\x1b[31m"
    r = run_memtrack("report", db)
    assert r.returncode == 0 and "\x1b" not in r.stdout, r.stderr
    history(db, n=1)                                      # appending reads the rows back
    assert count(db, "snapshots") == 4


def test_errors_quoting_the_history_never_carry_control_characters(tmp_path):
    db = history(tmp_path / "h.db")
    sql(db, "UPDATE meta SET value = CAST(x'1b5b33316d07ff' AS TEXT) WHERE key = 'schema'")
    one_line_error(run_memtrack("report", db), "history schema")
    with pytest.raises(SourceError) as e:
        Recorder(db)
    assert "\x1b" not in str(e.value)


# -- damaged contents ---------------------------------------------------------------------

DAMAGE = [
    "UPDATE snapshots SET t = 'abc'",
    "UPDATE snapshots SET held_bytes = 'x'",
    "UPDATE usage_spans SET pss = 'zz'",
    "UPDATE snapshots SET t = 1e308 WHERE id = 2",
    "UPDATE snapshots SET t = -1 WHERE id = 2",
    "UPDATE snapshots SET kernel_only_bytes = 1.5",
    "UPDATE usage_spans SET rss = -4096",
    "UPDATE buffers SET size = 'big'",
    "UPDATE processes SET pid = 'x'",
    "UPDATE category_spans SET category = x'41'",
    "UPDATE usage_spans SET process = 999",
    "UPDATE refs SET buffer = 999",
    "UPDATE buffer_spans SET first = 'zz'",
    "UPDATE ref_spans SET first = 3, last = 1",
]


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_values_fail_in_one_clear_line(tmp_path, damage):
    db = history(tmp_path / "h.db")
    sql(db, damage)
    with pytest.raises(SourceError) as e:
        load(db)
    assert f"history database {db} is damaged: " in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("damage", [DAMAGE[0] + ", held_bytes = 'x'", DAMAGE[2], DAMAGE[3]])
def test_readers_of_a_damaged_history_exit_in_one_line(tmp_path, damage):
    db = history(tmp_path / "h.db")
    sql(db, damage)
    before = (tmp_path / "h.db").read_bytes()
    for args in (["report", db], ["export-trace", db, "-o", str(tmp_path / "t.json")],
                 ["plot", db, "-o", str(tmp_path / "p.png")]):
        one_line_error(run_memtrack(*args), "is damaged")
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "p.png").exists()
    assert (tmp_path / "h.db").read_bytes() == before          # the readers changed nothing


# -- read-only readers --------------------------------------------------------------------

def test_a_history_whose_path_has_uri_characters_loads(tmp_path):
    d = tmp_path / "a?b#c%41"
    d.mkdir()
    db = history(d / "h.db")
    assert len(load(db)) == 3


def test_readers_need_no_write_access(nobody):
    exe, pkg = nobody.exe, nobody.pkg
    top = tempfile.mkdtemp(prefix="memtrack-ro-")      # a path nobody can walk
    ro = os.path.join(top, "ro")
    try:
        os.chmod(top, 0o777)
        os.mkdir(ro)
        db = history(os.path.join(ro, "h.db"))
        assert not os.path.exists(db + "-wal")
        text = os.path.join(top, "x.db")
        with open(text, "w") as f:
            f.write("not a database at all, just text " * 50)
        os.chmod(ro, 0o555)

        def nobody(*args):
            return subprocess.run(NOBODY + [exe, "-m", "memtrack", *args], capture_output=True, text=True,
                                  env=dict(os.environ, PYTHONPATH=pkg), cwd=pkg, timeout=120)
        r = nobody("report", db)
        assert r.returncode == 0 and "3 snapshots" in r.stdout, r.stderr
        r = nobody("export-trace", db, "-o", os.path.join(top, "t.json"))
        assert r.returncode == 0, r.stderr
        one_line_error(nobody("report", text), "not a memtrack history database")
        assert sorted(os.listdir(ro)) == ["h.db"]
    finally:
        os.chmod(ro, 0o755)
        shutil.rmtree(top)


# -- rules files --------------------------------------------------------------------------

def rules_error(path):
    from memtrack.categories import RulesError, load_rules
    with pytest.raises(RulesError) as e:
        load_rules(str(path))
    assert "\n" not in str(e.value)
    return str(e.value)


def test_deeply_nested_rules_values_are_refused_by_line(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("# rules\n[[rule]]\ncategory = 'X'\nname = " + "[" * 5000 + "]" * 5000 + "\n")
    assert rules_error(deep) == f"{deep}:4: arrays hold strings only"
    r = run_memtrack("summary", "--root", REAL_CAPTURE, "--rules", str(deep))
    one_line_error(r, f"{deep}:4:")


def test_many_comments_in_a_rules_array_and_a_large_rules_file_parse(tmp_path):
    from memtrack.categories import MAX_RULES_BYTES, load_rules
    import time
    many = tmp_path / "comments.toml"
    many.write_text("[[rule]]\ncategory = 'X'\nname = [\n" + "# a comment\n" * 5000 + "'a' ]\n")
    assert load_rules(str(many))[0].category == "X"
    big = tmp_path / "big.toml"
    rule = "[[rule]]\ncategory = \"X\"\nname = \"n\"\n"
    big.write_text(rule * (MAX_RULES_BYTES // len(rule)))
    t0 = time.monotonic()
    assert len(load_rules(str(big))) > 25000
    assert time.monotonic() - t0 < 10                   # linear: each key used to copy the rest


def test_rules_that_are_no_regular_file_or_too_large_are_refused(tmp_path):
    from memtrack.categories import MAX_RULES_BYTES
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = run_memtrack("summary", "--root", REAL_CAPTURE,
                     "--rules", str(fifo), timeout=60)
    one_line_error(r, f"{fifo}: not a regular file")
    assert rules_error("/dev/zero") == "/dev/zero: not a regular file"
    huge = tmp_path / "huge.toml"
    huge.write_text("#" * MAX_RULES_BYTES + "\n")
    assert "larger than 1 MiB" in rules_error(huge)
    crlf = tmp_path / "crlf.toml"
    crlf.write_bytes(b"[[rule]]\r\ncategory = 'X'\r\nname = [ 'a',\r\n 'b' ]\r\n")
    from memtrack.categories import load_rules
    assert load_rules(str(crlf))[0].category == "X"


# -- output files -------------------------------------------------------------------------

def test_new_output_files_follow_the_umask(tmp_path):
    for mask, want in ((0o077, 0o600), (0o002, 0o664), (0o022, 0o644)):
        out = tmp_path / f"ps-{mask:o}.txt"
        r = run_memtrack("--root", REAL_CAPTURE, "ps", "-o", str(out), preexec_fn=lambda m=mask: os.umask(m))
        assert r.returncode == 0, r.stderr
        assert oct(os.stat(out).st_mode & 0o7777) == oct(want)
    from memtrack.util.atomic import atomic_write, umask
    old = os.umask(0o027)
    try:
        assert umask() == 0o027
        atomic_write(str(tmp_path / "lib.txt"), b"x")
        atomic_write(str(tmp_path / "textfile.prom"), b"x", 0o644)
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "lib.txt").st_mode & 0o777 == 0o640
    assert os.stat(tmp_path / "textfile.prom").st_mode & 0o777 == 0o640
    # an existing file keeps its mode whatever the umask
    os.chmod(tmp_path / "lib.txt", 0o604)
    atomic_write(str(tmp_path / "lib.txt"), b"y")
    assert os.stat(tmp_path / "lib.txt").st_mode & 0o777 == 0o604
    if os.geteuid() == 0:                               # and its owner, where we may give it
        os.chown(tmp_path / "lib.txt", 65534, 65534)
        atomic_write(str(tmp_path / "lib.txt"), b"z")
        st = os.stat(tmp_path / "lib.txt")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o604)


def test_an_existing_file_the_caller_may_not_write_is_not_replaced(nobody):
    exe, pkg = nobody.exe, nobody.pkg
    top = tempfile.mkdtemp(prefix="memtrack-out-")
    try:
        os.chmod(top, 0o1777 & ~0o1000)                # world-writable, no sticky bit
        mine_ro = os.path.join(top, "ro")              # nobody's own file, mode 444
        with open(mine_ro, "w") as f:
            f.write("keep me\n")
        os.chown(mine_ro, 65534, 65534)
        os.chmod(mine_ro, 0o444)
        roots = os.path.join(top, "roots")             # root's file, 644
        with open(roots, "w") as f:
            f.write("root's\n")
        shared = os.path.join(top, "shared")           # nobody may write it: replaced
        with open(shared, "w") as f:
            f.write("old\n")
        os.chmod(shared, 0o666)

        def nobody(*args):
            return subprocess.run(NOBODY + [exe, "-m", "memtrack", "--root", REAL_CAPTURE, *args],
                                  capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=pkg),
                                  cwd=pkg, timeout=120)
        if not os.access(REAL_CAPTURE, os.R_OK) or nobody("ps", "-o", "/dev/null").returncode != 0:
            pytest.skip("the nobody user cannot read the fixture capture")
        for path in (mine_ro, roots):
            before = os.stat(path)
            one_line_error(nobody("ps", "-o", path), f"{path}: Permission denied")
            after = os.stat(path)
            assert (after.st_ino, after.st_uid, after.st_mode) == (before.st_ino, before.st_uid, before.st_mode)
        assert open(mine_ro).read() == "keep me\n" and open(roots).read() == "root's\n"
        r = nobody("ps", "-o", shared)
        assert r.returncode == 0, r.stderr
        st = os.stat(shared)
        assert st.st_mode & 0o777 == 0o666 and "PID" in open(shared).read()
        assert sorted(os.listdir(top)) == ["ro", "roots", "shared"]
    finally:
        shutil.rmtree(top)


# -- diff of damaged or filtered snapshots ------------------------------------------------

def test_diff_refuses_snapshots_that_contradict_themselves():
    from dataclasses import replace
    from memtrack.diff import DiffError, diff
    a = snap({"memfd:10": dict(inode=10, size=4096, name="a", **MFD),
              "memfd:11": dict(inode=11, size=4096, name="b", **MFD)},
             {100: ("app", {"memfd:10": ([3], []), "memfd:11": ([4], [])}), 200: ("x", {})})
    b = snap({"memfd:10": dict(inode=10, size=4096, name="a", **MFD)}, {100: ("app", {"memfd:10": ([3], [])})})
    assert diff(a, b).of("free")[0].buffer.id == "memfd:11"
    # filtered the supported way: still compared
    assert diff(a.restrict(pids={100}), b.restrict(kinds={"memfd"})).of("free")[0].buffer.id == "memfd:11"
    lost = replace(a, buffers=a.buffers[:1])                 # pid 100 still refers to memfd:11
    twice = replace(b, buffers=b.buffers * 2)
    two_pids = replace(b, processes=b.processes * 2)
    for x, y, words in ((lost, b, "snapshot A: pid 100 refers to buffer 'memfd:11'"),
                        (a, twice, "snapshot B: buffer 'memfd:10' listed twice"),
                        (a, two_pids, "snapshot B: pid 100 listed twice")):
        with pytest.raises(DiffError) as e:
            diff(x, y)
        assert isinstance(e.value, MemtrackError) and words in str(e.value)
    odd = replace(a, buffers=(replace(a.buffers[0], id="memfd:\x1b[31m"),) + a.buffers[1:])
    with pytest.raises(DiffError) as e:
        diff(odd, b)
    assert "\x1b" not in str(e.value)
