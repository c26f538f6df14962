"""Names from other processes in every output: a real process whose comm, cmdline, memfd and
/dev/shm names hold undecodable bytes and control characters, and kfixture trees for what
a test machine can't make (dma-buf exporters). No output may crash, hold a surrogate that
cannot be written, or carry a control character raw to a terminal."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest

from helpers.paths import REAL_CAPTURE
from kfixture import Tree
from livehelpers import SRC, run_memtrack
from memtrack.cli import main

ENV = dict(os.environ, PYTHONPATH=SRC)

HOSTILE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, ctypes.c_char_p(b"\xff\xfe\x1b[31mbad"), 0, 0, 0)      # PR_SET_NAME
fds = []
for name in (b"\xff\xfeinvalid\x1b]0;X\x07", b"pool\x1b[2J"):
    fd = os.memfd_create(os.fsdecode(name), 0)
    os.ftruncate(fd, 8192)
    fds.append(fd)
path = os.fsdecode(b"/dev/shm/\xffweird\nname-%d" % os.getpid())
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.unlink(path)
os.ftruncate(fd, 4096)
fds.append(fd)
print(os.getpid(), flush=True)
sys.stdin.read()
"""
COMM = "\\xff\\xfe\\x1b[31mbad"              # the comm as the views write it
MiB = 1 << 20
FF = "@FF@"                                  # stands for the byte 0xff in kfixture trees
EXPORTER = "nv\x1b[31m" + FF
BUFNAME = "buf\x1b]0;X\x07" + FF


def clean(text: str) -> None:
    """Nothing a terminal would act on, no undecodable byte left (as a surrogate, or as
    the \\udcXX that the CLI's stdout writes for one it is handed)."""
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", text), ascii(text)
    text.encode("utf-8")
    assert "\\udc" not in text, ascii(text)


def cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def esc(s: str) -> str:
    """A fixture name as the views write it."""
    return s.replace(FF, "\\xff").replace("\x1b", "\\x1b").replace("\x07", "\\x07")


@pytest.fixture
def dmabuf_tree(tmp_path):
    """Two processes share a dma-buf whose exporter and name hold an escape sequence and the
    byte 0xff, and one process's comm and cmdline do too."""
    t = Tree()
    t.proc(30, "bad" + FF + "\x1b[31mc", cmdline="app\x1b[2J" + FF).dmabuf(3, 7, MiB, EXPORTER, BUFNAME)
    t.proc(31, "peer").dmabuf(4, 7, MiB, EXPORTER, BUFNAME)
    t.bufinfo([{"size": MiB, "exporter": EXPORTER, "ino": 7, "count": 2, "name": BUFNAME}])
    root = t.write_dir(str(tmp_path / "tree"))
    for d, _dirs, files in os.walk(os.fsencode(root)):     # FF becomes the byte itself
        for f in files:
            path = os.path.join(d, f)
            if os.path.islink(path):
                target = os.readlink(path)
                os.unlink(path)
                os.symlink(target.replace(FF.encode(), b"\xff"), path)
            else:
                with open(path, "rb") as fh:
                    data = fh.read()
                with open(path, "wb") as fh:
                    fh.write(data.replace(FF.encode(), b"\xff"))
    return root


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    script = tmp_path_factory.mktemp("hostile") / "hostile.py"
    script.write_text(HOSTILE)
    # the cmdline is bytes too: an undecodable argument and a clear-screen sequence
    p = subprocess.Popen([os.fsencode(sys.executable), os.fsencode(script), b"\xff\xfe\x1b[2Jarg", b"[/bold]"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError("the hostile process failed to start")
        yield int(line)
    finally:
        p.stdin.close()
        p.wait(timeout=20)


def test_json_keeps_an_undecodable_cmdline_losslessly(hostile, capsys):
    """A cmdline's bytes that are not UTF-8 round-trip through JSON (as \\udcXX) like a comm's,
    under both backends."""
    for backend in ("procfs", "auto"):
        rc, out, err = cli(capsys, "--backend", backend, "--json", "-q", "-p", str(hostile))
        assert rc == 0, err
        proc = json.loads(out)["processes"][0]
        assert os.fsencode(proc["cmdline"]).endswith(b" \xff\xfe\x1b[2Jarg [/bold]"), ascii(proc["cmdline"])


# -- 1. Prometheus label values -------------------------------------------------------------

@pytest.mark.parametrize("per_pid", [False, True])
def test_textfile_with_hostile_names_writes_valid_escaped_labels(hostile, tmp_path, per_pid):
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families
    out = tmp_path / "h.prom"
    p = run_memtrack("--backend", "procfs", "textfile", "-q", "-o", str(out),
                     *(["--per-pid"] if per_pid else []), timeout=120)
    assert p.returncode == 0, p.stderr
    text = out.read_bytes().decode("utf-8")          # strict: valid UTF-8
    assert "\x1b" not in text
    pss = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "memtrack_process_pss_bytes" and s.labels["comm"] == COMM \
                    and s.labels.get("pid", str(hostile)) == str(hostile):
                pss[s.labels["kind"]] = s.value
    if per_pid:
        assert pss == {"memfd": 2 * 8192, "shm": 4096}
    else:                                    # summed over every process of that name
        assert pss["memfd"] >= 2 * 8192 and pss["shm"] >= 4096, pss


def test_serve_answers_scrapes_with_hostile_names(hostile):
    pytest.importorskip("prometheus_client")
    import urllib.request
    srv = subprocess.Popen([sys.executable, "-m", "memtrack", "--backend", "procfs", "serve",
                            "--listen", "127.0.0.1:0", "--min-interval", "3600"],
                           stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", srv.stderr.readline())
        assert m
        with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/metrics", timeout=120) as r:
            assert r.status == 200
            text = r.read().decode("utf-8")
    finally:
        srv.terminate()
        _, err = srv.communicate(timeout=20)
    assert 'memtrack_processes{comm="%s"}' % COMM.replace("\\", "\\\\") in text
    assert "Traceback" not in err, err


def test_textfile_escapes_a_hostile_exporter(dmabuf_tree, tmp_path):
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families
    out = tmp_path / "h.prom"
    p = run_memtrack("--root", dmabuf_tree, "textfile", "-q", "-o", str(out), timeout=120)
    assert p.returncode == 0, p.stderr
    text = out.read_bytes().decode("utf-8")
    clean(text)
    got = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in ("memtrack_buffer_bytes", "memtrack_process_pss_bytes"):
                got[s.name, s.labels.get("exporter") or s.labels.get("comm")] = s.value
    assert got == {("memtrack_buffer_bytes", esc(EXPORTER)): MiB,
                   ("memtrack_process_pss_bytes", esc("bad" + FF + "\x1b[31mc")): MiB / 2,
                   ("memtrack_process_pss_bytes", "peer"): MiB / 2}


# -- 2. control characters and undecodable bytes in every view ------------------------------

def test_matrix_header_escapes_a_hostile_comm(hostile, capsys):
    rc, out, err = cli(capsys, "--backend", "procfs", "matrix", "-p", str(hostile))
    assert rc == 0, err
    clean(out)
    assert out.splitlines()[0].split()[4] == f"{COMM}:{hostile}"
    assert "\\xff\\xfeinvalid\\x1b]0;X\\x07" in out


def test_top_once_in_a_pipe_escapes_names_and_reads_no_markup(hostile):
    pytest.importorskip("rich")
    p = run_memtrack("--backend", "procfs", "top", "--once", "-p", str(hostile), timeout=120,
                     env_extra={"COLUMNS": "400"})
    assert p.returncode == 0, p.stderr
    clean(p.stdout)
    # the cmdline: its undecodable bytes were replaced when read, its ESC is escaped here,
    # and "[/bold]" is shown, not taken for rich markup (which failed on it: rc 70)
    assert "\\x1b[2Jarg [/bold]" in p.stdout


def test_csv_writes_every_text_field_by_one_rule(hostile, capsys):
    rc, out, err = cli(capsys, "--backend", "procfs", "ps", "--csv", "-p", str(hostile))
    assert rc == 0, err
    clean(out)
    row = list(csv.DictReader(io.StringIO(out)))[0]
    assert row["comm"] == COMM
    # the cmdline keeps its undecodable bytes, as the comm does: \xff\xfe, not U+FFFD
    assert row["cmdline"].endswith("\\xff\\xfe\\x1b[2Jarg [/bold]"), row["cmdline"]
    rc, out, err = cli(capsys, "--backend", "procfs", "buffers", "--csv", "-p", str(hostile))
    clean(out)
    names = {r["name"] for r in csv.DictReader(io.StringIO(out))}
    assert {"\\xff\\xfeinvalid\\x1b]0;X\\x07", "pool\\x1b[2J"} <= names
    assert any(n.startswith("\\xffweird\\x0aname-") for n in names), names
    rc, out, err = cli(capsys, "--backend", "procfs", "matrix", "--csv", "-p", str(hostile))
    clean(out)
    assert f"{COMM}:{hostile}" in next(csv.reader(io.StringIO(out)))


@pytest.mark.parametrize("mode", [[], ["-o", "csv"], ["30"], ["30", "-o", "csv"], ["-a"], ["-a", "-o", "csv"],
                                  ["-b"], ["-b", "-o", "csv"]])
def test_dmabuf_dump_escapes_names_in_every_mode(dmabuf_tree, capsys, mode):
    rc, out, err = cli(capsys, "--root", dmabuf_tree, "dmabuf-dump", *mode)
    assert rc == 0, err
    clean(out)
    if "-a" in mode:                         # the grid names processes
        assert esc("bad" + FF + "\x1b[31mc") + ":30" in out
    else:
        assert esc(EXPORTER) in out
    if not mode or mode[0] == "30":
        assert esc(BUFNAME) in out


@pytest.mark.parametrize("cmd", [["summary", "--by", "exporter"], ["summary", "--by", "name"],
                                 ["summary", "--by", "exporter", "--csv"], ["matrix"], ["buffers", "--csv"]])
def test_table_and_csv_views_of_a_hostile_dmabuf(dmabuf_tree, capsys, cmd):
    rc, out, err = cli(capsys, "--root", dmabuf_tree, *cmd)
    assert rc == 0, err
    clean(out)


# -- 3. -o FILE in every command that prints --------------------------------------------------

AMD = ("pos:\t0\nflags:\t02100002\nmnt_id:\t24\nino:\t1082\n"
       "drm-driver:\tamdgpu\ndrm-client-id:\t30\ndrm-pdev:\t0000:04:00.0\n"
       "drm-total-vram:\t36152 KiB\ndrm-resident-vram:\t36152 KiB\n")


@pytest.mark.parametrize("cmd, want", [
    (["summary"], "TOTAL"), (["summary", "--csv"], "category,buffers,bytes"), (["summary", "--json"], '"by"'),
    (["matrix"], "nr_procs"), (["matrix", "--csv"], "buffer,kind"), (["matrix", "--json"], '"schema"'),
    (["gpu"], "amdgpu"), (["gpu", "--csv"], "pid,driver"), (["gpu", "--json"], '"gpu"'),
    (["dmabuf-dump"], "dmabuf total"), (["dmabuf-dump", "-o", "csv"], "TOTALS"), (["dmabuf-dump", "-a"], "Table"),
    (["dmabuf-dump", "-b"], "per-buffer"), (["dmabuf-dump", "--json"], '"schema"'),
])
def test_output_file_is_written_not_stdout(tmp_path, capsys, cmd, want):
    t = Tree()
    t.proc(40, "game").dmabuf(3, 7, MiB, "amdgpu", "fb").fd(4, "/dev/dri/renderD128", AMD)
    t.bufinfo([{"size": MiB, "exporter": "amdgpu", "ino": 7}])
    root = t.write_dir(str(tmp_path / "tree"))
    out = tmp_path / "out.txt"
    out.write_text("old\n")
    rc, stdout, err = cli(capsys, "--root", root, *cmd, "--output", str(out))
    assert rc == 0, err
    assert stdout == ""
    assert want in out.read_text()
    rc, again, err = cli(capsys, "--root", root, *cmd)   # the same text as on stdout
    assert again == out.read_text()


def test_top_output_file_holds_the_frames(tmp_path):
    pytest.importorskip("rich")
    out = tmp_path / "top.txt"
    p = run_memtrack("--backend", "procfs", "top", "-n", "2", "-d", "0", "-o", str(out), timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    text = out.read_text()
    assert "refresh 1" in text and "refresh 2" in text and "\x1b" not in text
    p = run_memtrack("--backend", "procfs", "top", "--once", "-o", str(out), timeout=120)
    assert p.returncode == 0 and p.stdout == "" and "refresh 1" in out.read_text()


@pytest.mark.parametrize("argv, want", [
    (["-o", "F"], "needs --once or -n N"),
    (["--json", "--once"], "no --json or --csv"),
    (["--csv", "-n", "1"], "no --json or --csv"),
])
def test_top_refuses_what_it_cannot_honour(tmp_path, argv, want):
    pytest.importorskip("rich")
    p = run_memtrack("top", *[str(tmp_path / a) if a == "F" else a for a in argv], timeout=60)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("memtrack: ") and want in p.stderr, p.stderr
    assert not (tmp_path / "F").exists() and p.stdout == ""


# -- 4. top's numbers, and a reader that goes away ---------------------------------------------

@pytest.mark.parametrize("argv, want", [
    (["-d", "nan", "-n", "2"], "--delay nan"), (["-d", "inf", "-n", "2"], "--delay inf"),
    (["-d", "-1", "--once"], "--delay -1"), (["-d", "1e10", "--once"], "--delay 1"),
    (["--events", "99999999999999999999", "--once"], "--events 9"), (["--events", "-1", "--once"], "--events -1"),
    (["--verify-every", "-5", "--once"], "--verify-every -5"), (["-n", "0"], "--frames 0"),
])
def test_top_numbers_out_of_range_one_line_exit_2(capsys, argv, want):
    pytest.importorskip("rich")
    rc, out, err = cli(capsys, "top", *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("memtrack: ") and want in err, err


def test_top_in_a_pipe_whose_reader_goes_exits_0():
    pytest.importorskip("rich")
    p = subprocess.Popen([sys.executable, "-m", "memtrack", "--backend", "procfs", "top", "-n", "50", "-d", "0.05"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    assert p.stdout.readline().startswith(b"memtrack top")      # `| head -1`
    p.stdout.close()
    rc = p.wait(timeout=120)
    err = p.stderr.read().decode()
    p.stderr.close()
    assert rc == 0 and err == "", (rc, err)


# -- 5. dmabuf-dump's options that contradict each other ----------------------------------------

# (-a with -b is no longer refused: Android accepts it, issue 14; test_dmabuf_dump_parity.py)
@pytest.mark.parametrize("argv, want", [
    (["-p", "416", "454"], "the PID argument or -p, not both"), (["-a", "-p", "416"], "take no PID"),
    (["-b", "-p", "416"], "take no PID"), (["--kind", "memfd"], "dma-bufs only"),
])
def test_dmabuf_dump_refuses_conflicting_options(tmp_path, capsys, argv, want):
    root = Tree()
    root.proc(416, "a").dmabuf(3, 7, MiB)
    root = root.write_dir(str(tmp_path / "tree"))
    rc, out, err = cli(capsys, "--root", root, "dmabuf-dump", *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("memtrack: ") and want in err, err


def test_dmabuf_dump_p_shows_those_processes_as_the_pid_argument_does(capsys):
    rc, by_arg, err = cli(capsys, "--root", REAL_CAPTURE, "dmabuf-dump", "454")
    assert rc == 0, err
    rc, by_p, err = cli(capsys, "--root", REAL_CAPTURE, "dmabuf-dump", "-p", "454")
    assert rc == 0 and by_p == by_arg and "python3:454" in by_p and "python3:416" not in by_p
