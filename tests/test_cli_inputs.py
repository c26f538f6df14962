"""Bad input on the command line: one line on stderr, a non-zero exit, never a traceback;
and the options a command cannot honour are refused, not ignored."""
from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile

import pytest

from livehelpers import SRC, memtrack_cmd, run_memtrack
from memtrack import cli

MiB = 1 << 20

COMMANDS = list(cli._commands())


def usage_error(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("memtrack: error: "), err
    return err


@pytest.mark.parametrize("name", COMMANDS)
def test_usage_error_is_one_line_in_every_subcommand(capsys, name):
    err = usage_error(capsys, [name, "-p", "abc"])
    assert err == f"memtrack: error: argument -p/--pid: not a pid list: 'abc' (memtrack {name} --help)\n"


def test_usage_error_is_one_line_at_top_level(capsys):
    assert usage_error(capsys, ["-p", "abc", "ps"]) == \
        "memtrack: error: argument -p/--pid: not a pid list: 'abc' (memtrack --help)\n"
    assert "invalid choice: 'bogus'" in usage_error(capsys, ["bogus"])
    assert "required: PID (memtrack show --help)" in usage_error(capsys, ["show"])
    # what was typed is quoted escaped: a newline in it does not make a second line
    assert "unrecognized arguments: x\\x0ay" in usage_error(capsys, ["ps", "x\ny"])


@pytest.mark.parametrize("value,shown", [("1", True), ("true", True), ("YES", True), (" 1 ", True),
                                         ("0", False), ("", False), ("no", False), ("false", False)])
def test_memtrack_debug_only_when_set_to_yes(monkeypatch, capsys, value, shown):
    def broken(args):
        raise RuntimeError("a bug")
    monkeypatch.setattr(cli._commands(["ps"])["ps"], "run", broken)
    monkeypatch.setenv("MEMTRACK_DEBUG", value)
    if shown:
        with pytest.raises(RuntimeError):
            cli.main(["ps"])
    else:
        assert cli.main(["ps"]) == 70
        err = capsys.readouterr().err
        assert err == "memtrack: internal error: RuntimeError: a bug (set MEMTRACK_DEBUG=1 for the traceback)\n"


def make_tree(tmp_path):
    from kfixture import Tree
    t = Tree()
    t.proc(10, "compositor").memfd(3, "pool", 100, size=4 * MiB)
    t.proc(11, "client").memfd(7, "pool", 100, size=4 * MiB)
    t.proc(13, "idle")                                      # exists, holds nothing
    return t.write_dir(str(tmp_path / "t"))


@pytest.mark.parametrize("text", ["", ",", " , ", "４１６", "0", "1_0", "+5", "-1", "abc"])
def test_pid_list_takes_ascii_digits_and_is_not_empty(capsys, text):
    err = usage_error(capsys, ["-p", text, "ps"])
    assert "argument -p/--pid: not a pid list" in err


def test_pid_list_accepted_forms(tmp_path):
    root = make_tree(tmp_path)
    for text in ("10,11", "10 11", "11,10,", "010,11"):
        r = run_memtrack("--root", root, "-p", text, "--csv")
        assert r.returncode == 0, r.stderr
        assert sorted(row.split(",")[0] for row in r.stdout.splitlines()[1:]) == ["10", "11"], text


@pytest.mark.parametrize("pid", ["0", "-1", "４１６", "1e3"])
def test_show_pid_must_be_a_pid(capsys, pid):
    assert "argument PID: not a pid" in usage_error(capsys, ["show", "--", pid])


def test_show_a_pid_that_is_not_there_fails(tmp_path):
    root = make_tree(tmp_path)
    r = run_memtrack("show", "13", "--root", root)
    assert (r.returncode, r.stdout) == (0, "pid 13 holds no shared buffers\n"), r.stderr
    r = run_memtrack("show", "99", "--root", root, "-q")
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"memtrack: pid 99: not in {root}\n")
    snap = str(tmp_path / "snap.json")
    assert run_memtrack("--root", root, "--json", "-o", snap).returncode == 0
    assert run_memtrack("show", "10", "--root", snap).returncode == 0
    r = run_memtrack("show", "99", "--root", snap, "--json", "-q")
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"memtrack: pid 99: not in {snap}\n")


def test_show_live_pid_that_does_not_exist_fails():
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read()) + 1                             # above pid_max: never a process
    r = run_memtrack("show", str(pid), "-q")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines()[-1] == f"memtrack: pid {pid}: no such process"
    idle = subprocess.Popen(["sleep", "30"])
    try:
        r = run_memtrack("show", str(idle.pid), "-q")
        assert (r.returncode, r.stdout) == (0, f"pid {idle.pid} holds no shared buffers\n")
    finally:
        idle.kill()
        idle.wait()


def test_show_refuses_pid_option(tmp_path):
    r = run_memtrack("show", "10", "-p", "11", "--root", make_tree(tmp_path))
    assert (r.returncode, r.stderr) == (2, "memtrack: show does not take -p: the process is its PID argument\n")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "-1", "0", "x", ""])
def test_diff_interval_is_checked(capsys, value):
    assert "argument -i/--interval: " in usage_error(capsys, ["diff", "live", "live", "-i", value])


def test_record_durations_and_counts_are_checked(capsys, tmp_path):
    db = str(tmp_path / "h.db")
    for argv in (["-i", "9" * 400], ["-i", "400d"], ["--duration", "9" * 400], ["--verify-every", "-5"],
                 ["--verify-every", "x"]):
        assert "argument " in usage_error(capsys, ["record", "-o", db] + argv), argv
    assert "argument -t/--top: not a count" in usage_error(capsys, ["report", db, "-t", "-1"])


@pytest.mark.parametrize("where", ["empty", "/etc", "/proc", "proc-is-a-file", "proc-is-a-link"])
def test_root_directory_without_proc_is_not_a_capture(tmp_path, where):
    root = where if where.startswith("/") else str(tmp_path / where)
    if not where.startswith("/"):
        os.mkdir(root)
    if where == "proc-is-a-file":
        open(os.path.join(root, "proc"), "w").close()
    elif where == "proc-is-a-link":
        os.symlink("/proc", os.path.join(root, "proc"))
    r = run_memtrack("--root", root)
    assert (r.returncode, r.stdout, r.stderr) == (
        2, "", f"memtrack: {root}: no proc/ directory in it: not a memtrack capture\n")


def test_root_directory_nobody_may_not_read_is_a_one_line_error(nobody):
    run, d = nobody.memtrack, nobody.pkg      # (d: a directory nobody may enter)
    private = os.path.join(d, "private")
    os.makedirs(os.path.join(private, "proc"))
    os.chmod(private, 0o700)
    r = run("--root", private)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"memtrack: {private}: Permission denied\n")
    os.chmod(private, 0o755)
    os.chmod(os.path.join(private, "proc"), 0o700)
    r = run("--root", private)
    assert (r.returncode, r.stderr) == (2, f"memtrack: {private}/proc: Permission denied\n")


def test_output_dash_is_stdout(tmp_path):
    root = make_tree(tmp_path)
    r = run_memtrack("--root", root, "-o", "-", "--csv", "-q", cwd=str(tmp_path))
    assert r.returncode == 0 and r.stdout.startswith("pid,rss,"), r.stderr
    assert not os.path.exists(tmp_path / "-")
    db = str(tmp_path / "h.db")
    assert run_memtrack("record", "-o", db, "-n", "1", "-i", "0", "-p", str(os.getpid()), "-q").returncode == 0
    r = run_memtrack("export-trace", db, "-o", "-", cwd=str(tmp_path))
    assert r.returncode == 0 and json.loads(r.stdout)["traceEvents"], r.stderr
    assert r.stderr.startswith("memtrack: wrote stdout: ")
    assert not os.path.exists(tmp_path / "-")
    r = run_memtrack("record", "-o", "-", "-n", "1", cwd=str(tmp_path))
    assert r.returncode == 2 and r.stderr.endswith("stdout cannot hold; name a file\n")


@pytest.mark.parametrize("argv", [["ps"], ["capture"], ["record"], ["export-trace", "h.db"],
                                  ["plot", "h.db"]])
def test_output_empty_name_is_refused(capsys, argv):
    assert "argument -o/--output: an empty file name" in usage_error(capsys, argv + ["-o", ""])


def test_capture_to_stdout_pipe_not_terminal(tmp_path):
    r = subprocess.run(memtrack_cmd("capture", "-q", "-p", str(os.getpid()), "-o", "-"), capture_output=True,
                       cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=SRC))
    assert r.returncode == 0, r.stderr
    with tarfile.open(fileobj=io.BytesIO(r.stdout), mode="r:gz") as tf:
        assert {"meta.json", "proc"} <= set(tf.getnames())
    assert b"memtrack: wrote stdout: " in r.stderr and not os.path.exists(tmp_path / "-")
    import pty
    master, slave = pty.openpty()
    try:
        r = subprocess.run(memtrack_cmd("capture", "-o", "-"), stdout=slave, stderr=subprocess.PIPE,
                           text=True, cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=SRC))
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 2 and r.stderr == ("memtrack: capture -o -: a tar.gz archive is not for a "
                                              "terminal; redirect stdout to a file or a pipe\n")


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("h") / "h.db")
    r = run_memtrack("record", "-o", db, "-n", "2", "-i", "0", "-p", str(os.getpid()), "-q")
    assert r.returncode == 0, r.stderr
    return db


def test_diff_and_report_write_to_output(tmp_path, history):
    root = make_tree(tmp_path)
    out = str(tmp_path / "out.txt")
    for argv in (["diff", root, root, "-q"], ["diff", root, root, "--json", "-q"], ["report", history],
                 ["report", history, "--json"]):
        r = run_memtrack(*argv, "-o", out)
        assert (r.returncode, r.stdout) == (0, ""), r.stderr
        with open(out) as f:
            assert f.read() == run_memtrack(*argv).stdout != "", argv
        os.unlink(out)


@pytest.mark.parametrize("argv,error", [
    (["report", "{db}", "--csv"], "report does not take --csv: use --json"),
    (["report", "{db}", "--kind", "memfd"], "report does not take --kind: it does not narrow a history by kind"),
    (["export-trace", "{db}", "-o", "{tmp}/t.json", "--kind", "memfd"], "export-trace does not take --kind"),
    (["record", "-o", "{tmp}/h.db", "--kind", "memfd"], "record does not take --kind: it records every kind"),
    (["record", "-o", "{tmp}/h.db", "--json"], "record does not take --json"),
    (["capture", "-o", "{tmp}/c.tar.gz", "--json"], "capture does not take --json: it writes an archive"),
    (["capture", "-o", "{tmp}/c.tar.gz", "--csv"], "capture does not take --csv: it writes an archive"),
    (["capture", "-o", "{tmp}/c.tar.gz", "--kind", "dmabuf"], "capture does not take --kind: an archive holds"),
    (["diff", "live", "live", "--csv"], "diff does not take --csv: use --json"),
    (["tag", "1", "3", "x", "-p", "1"], "tag does not take -p"),
])
def test_options_a_command_cannot_honour_are_refused(tmp_path, history, argv, error):
    r = run_memtrack(*[a.format(db=history, tmp=tmp_path) for a in argv])
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("memtrack: " + error), r.stderr
    assert r.stderr.count("\n") == 1 and os.listdir(tmp_path) == []


def saved(tmp_path, name, *argv, **changes):
    """A JSON snapshot of make_tree's tree saved with argv, with top-level keys changed."""
    root = str(tmp_path / "t") if os.path.isdir(tmp_path / "t") else make_tree(tmp_path)
    path = str(tmp_path / name)
    r = run_memtrack("--root", root, "--json", "-q", *argv)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    doc.update(changes)
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def test_diff_refuses_snapshots_of_different_selections(tmp_path):
    whole, by_pid = saved(tmp_path, "a.json"), saved(tmp_path, "p.json", "-p", "10")
    by_kind, part = saved(tmp_path, "k.json", "--kind", "memfd"), saved(tmp_path, "s.json", scope="pids")
    r = run_memtrack("diff", whole, by_pid)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", (
        "memtrack: A and B were saved with different selections (A: every process, every kind; "
        "B: pids 10, every kind): what one left out would read as gone; narrow both alike with -p/--kind\n"))
    r = run_memtrack("diff", by_kind, whole)
    assert r.returncode == 2 and "(A: every process, kinds memfd; B: every process, every kind)" in r.stderr
    r = run_memtrack("diff", whole, part)
    assert (r.returncode, r.stderr) == (2, "memtrack: B covers only some processes (captured with -p), the "
                                           "other every process: the rest would read as gone; name the "
                                           "processes to compare with -p\n")
    # narrowed alike, they compare: nothing changed
    for argv in ([whole, by_pid, "-p", "10"], [by_kind, whole, "--kind", "memfd"], [whole, part, "-p", "10,11"],
                 [by_pid, by_pid]):
        r = run_memtrack("diff", *argv)
        assert (r.returncode, r.stderr) == (0, ""), argv
        assert "0 created, 0 freed" in r.stdout and "no process changed" in r.stdout


def test_diff_warns_of_other_host_and_time_order(tmp_path):
    a = saved(tmp_path, "a.json", host={"hostname": "one", "kernel": None}, taken_at="2026-01-02T00:00:00Z")
    b = saved(tmp_path, "b.json", host={"hostname": "two", "kernel": None}, taken_at="2026-01-01T00:00:00Z")
    r = run_memtrack("diff", a, b)
    assert r.returncode == 0 and "no process changed" in r.stdout
    assert r.stderr == ("memtrack: warning: A and B come from different hosts (one, two)\n"
                        "memtrack: warning: B (2026-01-01T00:00:00Z) was taken before A (2026-01-02T00:00:00Z): "
                        "what B lacks reads as freed\n")
    assert run_memtrack("diff", b, b).stderr == ""


def test_snapshot_with_malformed_filter_is_refused(tmp_path):
    bad = saved(tmp_path, "f.json", filter={"pids": "10"})
    r = run_memtrack("diff", bad, bad)
    assert (r.returncode, r.stderr) == (2, f"memtrack: {bad}: not a memtrack snapshot: a malformed \"filter\" "
                                           "(the -p/--kind it was saved with)\n")


@pytest.mark.parametrize("change,want", [
    ({"kernel": "x"}, "kernel: expected an object, got a string"),
    ({"host": ["h"]}, "host: expected an object, got a list"),
    ({"skipped": 3}, "skipped: expected an object, got a number"),
    ({"buffers": [5]}, "buffers: expected an object, got a number"),
    ({"processes": ["p"]}, "processes: expected an object, got a string"),
    ({"processes": [{"pid": 1, "refs": [7]}]}, "pid 1: refs: expected an object, got a number"),
    ({"processes": [{"refs": []}]}, "the field 'pid' is missing"),
    ({"gpu": [None]}, "gpu: expected an object, got null"),
    ({"buffers": {}}, "expected a list, got an object"),
])
def test_bad_snapshot_error_names_the_file_not_python(tmp_path, change, want):
    path = saved(tmp_path, "s.json", **change)
    r = run_memtrack("diff", path, path)
    assert (r.returncode, r.stderr) == (2, f"memtrack: {path}: not a memtrack snapshot: {want}\n")


def test_truncated_stream_error_names_the_file(tmp_path):
    path = tmp_path / "cut.stream"
    path.write_bytes(b"memtrack-stream 1 BOUNDARY1\n")
    r = run_memtrack("--root", str(path))
    assert (r.returncode, r.stderr) == (2, f"memtrack: {path}: capture stream is truncated (no end record): "
                                           "the script stopped early\n")


def test_diff_text_escapes_names_and_times(tmp_path):
    a = saved(tmp_path, "a.json")
    with open(a) as f:
        doc = json.load(f)
    doc["taken_at"] = "2026-01-01T00:00:00Z\x1b[2J"
    doc["buffers"].append({"id": "dmabuf:77", "kind": "dmabuf", "inode": 77, "size": MiB,
                           "exporter": "ev\x1b]0;X\x07il", "holders": [10]})
    p10 = next(p for p in doc["processes"] if p["pid"] == 10)
    p10["comm"] = "co\x1b[31mmp\x9b"
    p10["refs"].append({"buffer": "dmabuf:77", "fd_list": [9]})
    b = str(tmp_path / "b.json")
    with open(b, "w") as f:
        json.dump(doc, f)
    r = run_memtrack("diff", a, b)
    assert r.returncode == 0, r.stderr
    assert not any(c in r.stdout for c in "\x1b\x07\x9b"), r.stdout
    assert "exporter ev\\x1b]0;X\\x07il" in r.stdout and "10 co\\x1b[31mmp\\x9b: " in r.stdout
    assert "Z\\x1b[2J" in r.stdout


def test_snapshot_notes_are_escaped(tmp_path):
    path = saved(tmp_path, "n.json", notes=["a\x1b[31mred\nsecond line"])
    r = run_memtrack("--root", path)
    assert r.returncode == 0 and r.stderr == "memtrack: note: a\\x1b[31mred\\x0asecond line\n"


def test_report_text_escapes_names():
    from memtrack.cli.commands.report import render_text
    doc = {"history": "h\x1b[2J.db", "snapshots": 2, "start": "s", "end": "e", "seconds": 1, "runs": 1,
           "processes": [], "categories": [], "kernel_only": None,
           "suspects": [{"kind": "growth", "subject": "pid 7 (ev\x1b]0;X\x07il)", "message": "grew\r",
                         "evidence": {}}]}
    text = render_text(doc)
    assert not any(c in text for c in "\x1b\x07\r")
    assert text.startswith("h\\x1b[2J.db: 2 snapshots")
    assert "  growth: pid 7 (ev\\x1b]0;X\\x07il): grew\\x0d\n" in text


def test_textfile_output_dash_is_stdout_and_empty_is_refused(tmp_path, capsys):
    pytest.importorskip("prometheus_client")
    root = make_tree(tmp_path)
    r = run_memtrack("textfile", "--root", root, "-o", "-", cwd=str(tmp_path))
    assert r.returncode == 0 and "memtrack_buffer_bytes" in r.stdout and "wrote" not in r.stderr
    assert not os.path.exists(tmp_path / "-")
    assert "an empty file name" in usage_error(capsys, ["textfile", "-o", ""])


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "1e308", "x"])
def test_serve_min_interval_is_checked(capsys, text):
    assert "--min-interval" in usage_error(capsys, ["serve", "--min-interval", text])


def test_an_error_quoting_a_hostile_path_stays_one_line(tmp_path):
    bad = str(tmp_path / "no\x1b[2J\nsuch")
    for argv in (["--root", bad], ["diff", bad, bad], ["-o", bad + "/x", "capture"]):
        r = run_memtrack(*argv)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "\x1b" not in r.stderr, argv
