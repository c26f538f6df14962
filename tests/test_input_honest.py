"""Input that is no data is said so, never used as data; messages tell what is true (issue
15, point 6): pids no process can have, repeated or contradicted sidecar lines, JSON values
out of range, root told to run as root, a skipped maps read as an exit, -p naming absent
pids, ps's options before another command, and JSON or archives read from pipes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

import memtrack
from memtrack.cli import main
from memtrack.sources import archive as archive_mod
from memtrack.json_out import to_json
from kfixture import Tree
from livehelpers import SRC, memtrack_cmd, run_memtrack

PID_MAX_LIMIT = 4194304


def cli(capsys, *argv):
    try:
        rc = main(list(argv))
    except SystemExit as exc:           # a usage error
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_exit_2(capsys, *argv, want=""):
    """Exit 2 and the error in one line (with -q: no notes before it, but the count of
    processes denied, which -q keeps)."""
    rc, out, err = cli(capsys, "-q", *argv)
    assert rc == 2 and out == "", (rc, out, err)
    last = err.splitlines()[-1] if err else ""
    assert err.count("\n") == 1 + err.count("memtrack: access denied for "), err
    assert last.startswith("memtrack: ") and "Traceback" not in err and want in last, err
    return err


def holders_tree():
    """pid 10 holds memfd 100 (4096 B) by fd and shm 200 (8192 B) by a mapping."""
    t = Tree()
    p = t.proc(10, "app")
    p.memfd(3, "pool", 100, 4096)
    p.map(0x7f0000000000, 0x7f0000002000, "/dev/shm/x", "00:1b", 200, size=8192)
    return t


def both(t: Tree, tmp_path):
    """The tree as a directory and as a capture archive."""
    return [t.write_dir(str(tmp_path / "tree")), t.write_tar(str(tmp_path / "cap.tgz"))]


def notes_with(snap, *words):
    return [n for n in snap.notes if all(w in n for w in words)]


def saved_json(tmp_path, t=None) -> dict:
    snap = memtrack.scan((t or holders_tree()).write_dir(str(tmp_path / "for_json")))
    return json.loads(to_json(snap))


# -- pids no process can have -------------------------------------------------------------

def test_pid_0_and_above_pid_max_in_a_tree_or_archive_are_not_processes(tmp_path):
    t = holders_tree()
    t.proc(0, "idle").memfd(3, "ghost", 300, 4096)
    t.proc(PID_MAX_LIMIT + 1, "big").memfd(3, "ghost", 301, 4096)
    t.proc(PID_MAX_LIMIT, "max").memfd(3, "edge", 302, 4096)      # the largest pid there is
    for path in both(t, tmp_path):
        snap = memtrack.scan(path)
        assert sorted(snap.process_map) == [10, PID_MAX_LIMIT], path
        assert {b.inode for b in snap.buffers} == {100, 200, 302}
        (note,) = notes_with(snap, "no process", "proc/0")
        assert note.startswith("2 proc/ entries") and f"proc/{PID_MAX_LIMIT + 1}" in note


@pytest.mark.parametrize("where,bad", [
    ("process", 0), ("process", PID_MAX_LIMIT + 1), ("holder", 0), ("denied", 0),
    ("denied", 1 << 40), ("vanished", -3),
])
def test_json_snapshot_with_a_pid_no_process_can_have_is_refused(tmp_path, capsys, where, bad):
    doc = saved_json(tmp_path)
    if where == "process":
        doc["processes"][0]["pid"] = bad
        for b in doc["buffers"]:
            b["holders"] = [bad]
    elif where == "holder":
        doc["buffers"][0]["holders"] = sorted([bad] + doc["buffers"][0]["holders"])
    else:
        doc["skipped"][where] = [bad]
    f = tmp_path / "snap.json"
    f.write_text(json.dumps(doc))
    one_line_exit_2(capsys, "--root", str(f), want="is no process id")


# -- sidecars: repeated lines, contradicted inodes ------------------------------------------

def test_repeated_fdstat_and_mapstat_lines_are_noted_and_a_conflict_is_not_used(tmp_path):
    t = holders_tree()
    p = t.procs[10]
    p.stat(3, "00:01", 100, 1 << 40)                                   # fd 3 again, another size
    p.mapstat.append("%x-%x 00:1b 200 8192 100777" % (0x7f0000000000, 0x7f0000002000))   # same again
    for path in both(t, tmp_path):
        snap = memtrack.scan(path)
        sizes = {b.inode: b.size for b in snap.buffers}
        assert sizes[100] is None           # 4096 or 1 TiB: which line is the true one?
        assert sizes[200] == 8192           # the repeated line says the same: kept
        assert len(notes_with(snap, "repeated lines in fdstat", "proc/10/fdstat")) == 1
        assert len(notes_with(snap, "repeated lines in mapstat", "proc/10/mapstat")) == 1


def test_fdstat_inode_contradicting_the_fdinfo_is_noted_and_not_used(tmp_path):
    t = Tree()
    p = t.proc(10, "app")
    p.memfd(3, "pool", 100)                       # fdinfo: ino 100
    p.stat(3, "00:01", 555, 4096)                  # the sidecar: ino 555
    p.memfd(4, "fine", 101, 8192)                  # agrees: used
    for path in both(t, tmp_path):
        snap = memtrack.scan(path)
        by_ino = {b.inode: b.size for b in snap.buffers}
        assert by_ino == {100: None, 101: 8192}, path
        (note,) = notes_with(snap, "fdstat inode contradicts", "proc/10/fd/3")
        assert note.startswith("1 ")


# -- JSON values in range -----------------------------------------------------------------

def _gpu_doc(doc):
    doc["gpu"] = [{"pid": 10, "driver": "i915", "client_id": 1, "holders": [10], "fds": [5],
                   "regions": {"system0": {"total": 4096}}, "engines": {}}]
    return doc


@pytest.mark.parametrize("change,want", [
    (lambda d: d["buffers"][0].update(size=2 ** 70), "beyond what a 64-bit"),
    (lambda d: d["buffers"][0].update(inode=2 ** 64), "beyond what a 64-bit"),
    (lambda d: d["buffers"][0].update(fd_refs=2 ** 64), "beyond what a 64-bit"),
    (lambda d: d["processes"][0]["refs"][0].update(fd_list=[-1]), "no file descriptor"),
    (lambda d: d["processes"][0]["refs"][0].update(fd_list=[1 << 31]), "no file descriptor"),
    (lambda d: d["processes"][0].update(uid=-1), "no user id"),
    (lambda d: d["processes"][0].update(uid=1 << 32), "no user id"),
    (lambda d: _gpu_doc(d)["gpu"][0].update(fds=[-2]), "no file descriptor"),
    (lambda d: _gpu_doc(d)["gpu"][0]["regions"]["system0"].update(total=-1), "non-negative"),
    (lambda d: _gpu_doc(d)["gpu"][0]["regions"]["system0"].update(total=2 ** 70), "64-bit"),
    (lambda d: d["kernel"].update(dmabuf_exported_count=1, dmabuf_exported_bytes=2 ** 64 + 1),
     "more than 1 dma-bufs can hold"),
    (lambda d: d["kernel"].update(dmabuf_exported_count=-1), "non-negative"),
])
def test_json_sizes_and_counts_out_of_range_are_refused(tmp_path, capsys, change, want):
    doc = saved_json(tmp_path)
    doc["processes"][0]["refs"].sort(key=lambda r: r["fds"], reverse=True)   # the memfd's (by fd) first
    change(doc)
    f = tmp_path / "snap.json"
    f.write_text(json.dumps(doc))
    one_line_exit_2(capsys, "--root", str(f), want=want)


def test_json_largest_kernel_values_and_sums_past_2_64_are_read(tmp_path, capsys):
    doc = saved_json(tmp_path)
    doc["buffers"][0]["size"] = 2 ** 64 - 1
    doc["buffers"][0]["inode"] = 2 ** 64 - 1
    doc["kernel"].update(dmabuf_exported_count=3, dmabuf_exported_bytes=2 ** 64 + 5)  # a sum
    f = tmp_path / "snap.json"
    f.write_text(json.dumps(doc))
    snap = memtrack.load(str(f))
    assert snap.kernel.dmabuf_exported_bytes == 2 ** 64 + 5
    assert max(b.size for b in snap.buffers) == 2 ** 64 - 1


# -- root is never told to run as root -------------------------------------------------------

HOLD = "import sys, time; sys.stdout.write('up\\n'); sys.stdout.flush(); sys.stdin.read()"


@pytest.mark.requires_root("needs root and setpriv")
def test_show_as_root_without_ptrace_is_not_told_to_run_as_root():
    """Root whose CAP_SYS_PTRACE is gone (a container, a confined service) is refused a
    process with more capabilities than it: memtrack says the kernel refused, not 'run as
    root', which it is."""
    if not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv")
    holder = subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"up\n"
        r = run_memtrack("--backend", "procfs", "show", str(holder.pid), timeout=120,
                         prefix=["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace", "--"])
    finally:
        holder.stdin.close()
        holder.wait(timeout=20)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stderr)
    assert f"memtrack: pid {holder.pid}: access denied (even to root" in r.stderr, r.stderr
    assert "run as root" not in r.stderr


def test_reading_roots_own_capture_is_not_told_to_run_as_root(tmp_path, capsys):
    t = holders_tree()
    t.globals["meta.json"] = json.dumps({"tool": "memtrack", "uid": 0, "scope": "all",
                                         "skipped": {"denied": [12], "vanished": [], "unreadable": []}}).encode()
    for path in both(t, tmp_path):
        err = one_line_exit_2(capsys, "show", "--root", path, "12", want="pid 12: access denied")
        assert "run as root" not in err and "when captured, even to root" in err, err
        rc, out, err = cli(capsys, "--root", path)
        assert rc == 0 and "access denied for 1 process (when captured, even to root)" in err, err
        assert "run as root" not in err


def test_reading_a_saved_snapshot_is_not_told_to_run_as_root(tmp_path, capsys):
    doc = saved_json(tmp_path)
    doc["skipped"]["denied"] = [12]
    f = tmp_path / "snap.json"
    f.write_text(json.dumps(doc))
    err = one_line_exit_2(capsys, "show", "--root", str(f), "12", want="pid 12: access denied")
    assert "run as root" not in err and "when the snapshot was taken" in err


# -- a maps too large is not an exit --------------------------------------------------------

def test_process_whose_maps_was_too_large_is_unreadable_not_exited(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(archive_mod, "MAX_MEMBER", 64 << 10)
    t = holders_tree()
    big = t.proc(11, "huge")
    big.memfd(3, "pool", 100, 4096)
    for i in range(1000):                      # ~100 KiB of maps
        big.private_map(0x10000000 + i * 0x1000, 0x10001000 + i * 0x1000)
    path = t.write_tar(str(tmp_path / "cap.tgz"))
    snap = memtrack.scan(path)
    assert snap.skipped.unreadable == (11,) and snap.skipped.vanished == ()
    rc, out, err = cli(capsys, "--root", path)
    assert rc == 0 and "exited during the scan" not in err
    assert "memtrack: 1 process could not be read" in err and "proc/11/maps" in err


# -- -p naming pids that are not there --------------------------------------------------------

def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_p_naming_pids_that_are_not_there_says_so():
    gone = _dead_pid()
    r = run_memtrack("--backend", "procfs", "-p", str(gone), timeout=120)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert r.stderr.splitlines()[-1] == f"memtrack: -p {gone}: no such process", r.stderr
    # one of two there: the table for it, and a line for the other
    r = run_memtrack("--backend", "procfs", "--json", "-p", f"{gone},{os.getpid()}", timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["filter"]["pids"] == sorted([gone, os.getpid()])
    assert f"memtrack: -p {gone}: no such process\n" in r.stderr, r.stderr
    r = run_memtrack("buffers", "-p", str(gone), timeout=120)
    assert r.returncode == 2 and f"-p {gone}: no such process" in r.stderr
    r = run_memtrack("capture", "-o", os.devnull, "-p", str(gone), timeout=120)
    assert r.returncode == 2 and r.stderr == f"memtrack: -p {gone}: no such process\n", r.stderr


def test_p_naming_pids_not_in_a_capture_or_snapshot_says_so(tmp_path, capsys):
    t = holders_tree()
    for path in both(t, tmp_path):
        one_line_exit_2(capsys, "--root", path, "-p", "99", want=f"-p 99: not in {path}")
    f = tmp_path / "snap.json"
    f.write_text(json.dumps(saved_json(tmp_path)))
    rc, out, err = cli(capsys, "--root", str(f), "-p", "99")       # maybe there, holding nothing
    assert rc == 0 and "note: -p 99: not in" in err and "lists only the processes holding" in err
    # above PID_MAX_LIMIT no pid is: a usage error
    one_line_exit_2(capsys, "-p", str(PID_MAX_LIMIT + 1), want="not a pid list")


# -- -s/-r before the command -------------------------------------------------------------------

def test_sort_options_before_the_command_are_honoured_or_refused(tmp_path, capsys):
    t = holders_tree()
    t.proc(20, "small").memfd(3, "tiny", 400, 1024)
    path = t.write_dir(str(tmp_path / "tree"))

    def pids(*argv):
        rc, out, err = cli(capsys, *argv, "--root", path, "--csv")
        assert rc == 0, err
        return [int(line.split(",")[0]) for line in out.splitlines()[1:]]
    assert pids() == [10, 20]                      # pss, largest first
    assert pids("-s", "pid", "-r") == [20, 10]
    assert pids("-s", "pid", "-r", "ps") == [20, 10]
    assert pids("-r", "ps", "-s", "pss") == [20, 10]     # after ps wins, before ps still counts
    for argv, want in ((["-s", "pid", "buffers"], "-s/--sort before the command"),
                       (["-r", "matrix"], "-r/--reverse before the command"),
                       (["-s", "rss", "top", "--once"], "top takes it after its name")):
        one_line_exit_2(capsys, *argv, "--root", path, want=want)


# -- pipes ----------------------------------------------------------------------------------------

def _env():
    return dict(os.environ, PYTHONPATH=SRC)


def test_diff_of_two_json_snapshots_from_process_substitution(tmp_path):
    if not shutil.which("bash"):
        pytest.skip("needs bash")
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    t = holders_tree()
    a.write_text(to_json(memtrack.scan(t.write_dir(str(tmp_path / "ta")))))
    t.proc(11, "new").memfd(3, "fresh", 500, 65536)
    b.write_text(to_json(memtrack.scan(t.write_dir(str(tmp_path / "tb")))))
    cmd = " ".join(memtrack_cmd())
    r = subprocess.run(["bash", "-c", f"{cmd} diff --json <(cat {a}) <(cat {b})"],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    ref = subprocess.run(memtrack_cmd("diff", "--json", str(a), str(b)), capture_output=True,
                         text=True, env=_env(), timeout=120)
    want = json.loads(ref.stdout)
    assert {k: v for k, v in d.items() if k not in "ab"} == {k: v for k, v in want.items() if k not in "ab"}
    assert '"inode": 500' in r.stdout


def _through_pipe(data: bytes, *argv, stdin=False):
    """memtrack ARGV reading data from a pipe: /dev/fd/N (pass_fds) or stdin; {} in argv is
    the pipe's name. The writer is a thread, as a remote ssh would be, writing in pieces."""
    r, w = os.pipe()

    def write():
        with os.fdopen(w, "wb") as f:
            for i in range(0, len(data), 1000):
                f.write(data[i:i + 1000])
                f.flush()
    writer = threading.Thread(target=write)
    writer.start()
    try:
        name = "-" if stdin else f"/dev/fd/{r}"
        args = [a.replace("{}", name) for a in argv]
        kw = {"stdin": r} if stdin else {"pass_fds": (r,)}
        return subprocess.run(memtrack_cmd(*args), capture_output=True, text=True, env=_env(),
                              timeout=120, **kw)
    finally:
        os.close(r)
        writer.join(30)


@pytest.mark.parametrize("stdin", [False, True])
def test_json_archive_and_plain_tar_from_a_pipe(tmp_path, stdin):
    t = holders_tree()
    tgz = t.write_tar(str(tmp_path / "cap.tgz"))
    import gzip
    plain = gzip.decompress(open(tgz, "rb").read())
    js = to_json(memtrack.scan(tgz)).encode()
    want = json.loads(subprocess.run(memtrack_cmd("--root", tgz, "--json"), capture_output=True,
                                     env=_env(), timeout=120).stdout)
    for data in (open(tgz, "rb").read(), plain, js):
        r = _through_pipe(data, "--root", "{}", "--json", stdin=stdin)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        for key in ("buffers", "processes", "totals"):
            assert got[key] == want[key], key
    r = _through_pipe(open(tgz, "rb").read(), "show", "--root", "{}", "10", stdin=stdin)
    assert r.returncode == 0 and "memfd" in r.stdout, r.stderr
    r = _through_pipe(b"", "--root", "{}", stdin=stdin)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "empty" in r.stderr, r.stderr
    r = _through_pipe(b"hello\n" * 200, "--root", "{}", stdin=stdin)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a capture archive" in r.stderr
