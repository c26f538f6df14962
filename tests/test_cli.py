"""The command line: tables, formats, selection and error handling."""
from __future__ import annotations

import csv
import io
import json

from kfixture import Tree
from livehelpers import run_memtrack

MiB = 1 << 20


def make_tree(tmp_path):
    t = Tree()
    t.proc(10, "compositor").memfd(3, "pool", 100, size=4 * MiB).dmabuf(4, 5, 2 * MiB, "system", "fb")
    t.proc(11, "client").memfd(7, "pool", 100, size=4 * MiB)
    t.proc(12, "camera").dmabuf(3, 5, 2 * MiB, "system", "fb").dmabuf(4, 6, 1 * MiB, "system", "cam")
    t.bufinfo([{"size": 2 * MiB, "exporter": "system", "ino": 5, "name": "fb"},
               {"size": 1 * MiB, "exporter": "system", "ino": 6, "name": "cam"},
               {"size": 8 * MiB, "exporter": "system", "ino": 9}])
    return t.write_dir(str(tmp_path / "t"))


def test_ps_table_sorted_by_pss_with_kind_columns(tmp_path):
    root = make_tree(tmp_path)
    r = run_memtrack("--root", root, "-b")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["PID", "Rss", "Pss", "Uss", "Mapped", "dmabuf", "memfd", "Name"]
    assert [l.split()[0] for l in lines[1:4]] == ["10", "11", "12"]     # equal pss: lower pid first
    assert lines[1].split()[1:4] == [str(6 * MiB), str(3 * MiB), "0"]
    assert lines[3].split()[1:4] == [str(3 * MiB), str(2 * MiB), str(1 * MiB)]
    total = [l for l in lines if "TOTAL" in l][0].split()
    assert total[:3] == [str(13 * MiB), str(7 * MiB), str(1 * MiB)]
    assert "kernel-only: 8388608" in r.stdout


def test_sort_reverse_pid_kind_filters(tmp_path):
    root = make_tree(tmp_path)
    r = run_memtrack("--root", root, "-s", "pid", "-r")
    assert [l.split()[0] for l in r.stdout.splitlines()[1:4]] == ["12", "11", "10"]
    r = run_memtrack("--root", root, "--kind", "memfd", "-b")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["PID", "Rss", "Pss", "Uss", "Mapped", "memfd", "Name"]
    assert sorted(l.split()[0] for l in lines[1:3]) == ["10", "11"]
    r = run_memtrack("--root", root, "-p", "11,12", "--csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {row["pid"]: int(row["pss"]) for row in rows} == {"12": 2 * MiB, "11": 2 * MiB}


def test_line_under_the_table_follows_kind(tmp_path):
    """Under --kind the held, kernel-only and dma-buf figures are those of the kinds shown:
    a machine-wide held figure beside the dma-buf total read as a discrepancy."""
    root = make_tree(tmp_path)
    last = run_memtrack("--root", root, "-b").stdout.splitlines()[-1]
    assert last == (f"held by processes: {7 * MiB}; dma-buf exported: {11 * MiB} (debugfs); "
                    f"kernel-only: {8 * MiB}")
    last = run_memtrack("--root", root, "-b", "--kind", "dmabuf").stdout.splitlines()[-1]
    assert last == (f"held by processes (dmabuf): {3 * MiB}; dma-buf exported: {11 * MiB} "
                    f"(debugfs); kernel-only: {8 * MiB}")
    last = run_memtrack("--root", root, "-b", "--kind", "memfd").stdout.splitlines()[-1]
    assert last == f"held by processes (memfd): {4 * MiB}; kernel-only: 0"


def test_memtrack_ps_subcommand_equals_default(tmp_path):
    root = make_tree(tmp_path)
    assert run_memtrack("--root", root).stdout == run_memtrack("ps", "--root", root).stdout


def test_buffers_and_show(tmp_path):
    root = make_tree(tmp_path)
    r = run_memtrack("buffers", "--root", root, "--csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(x["buffer"], x["nr_procs"], x["holders"]) for x in rows] == [
        ("dmabuf:9", "0", ""), ("memfd:100", "2", "10 11"), ("dmabuf:5", "2", "10 12"), ("dmabuf:6", "1", "12")]
    r = run_memtrack("show", "12", "--root", root)
    assert "pid 12 (camera)" in r.stdout and "cam" in r.stdout and "10(compositor),self" in r.stdout
    doc = json.loads(run_memtrack("show", "12", "--root", root, "--json").stdout)
    assert [p["pid"] for p in doc["processes"]] == [12]
    assert {b["id"] for b in doc["buffers"]} == {"dmabuf:5", "dmabuf:6"}


def test_json_document_schema(tmp_path):
    root = make_tree(tmp_path)
    doc = json.loads(run_memtrack("--root", root, "--json").stdout)
    assert doc["schema"] == 1 and doc["source"].startswith("dir:")
    assert set(doc) >= {"schema", "taken_at", "source", "host", "buffers", "processes", "kernel", "skipped"}
    p10 = [p for p in doc["processes"] if p["pid"] == 10][0]
    assert p10["totals"]["rss"] == 6 * MiB and p10["by_kind"]["memfd"]["pss"] == 2 * MiB
    assert p10["refs"][0].keys() >= {"buffer", "fds", "maps", "mapped"}
    assert doc["kernel"]["kernel_only_bytes"] == 8 * MiB and doc["kernel"]["dmabuf_exported_bytes"] == 11 * MiB


def test_errors_are_one_line_exit_2(tmp_path):
    cases = [
        ("--root", str(tmp_path / "missing")),
        ("--root", str(tmp_path)),                 # a directory without proc/ is accepted: empty
    ]
    r = run_memtrack(*cases[0])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such file" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = run_memtrack("--root", str(bad))
    assert r.returncode == 2 and r.stderr.startswith("memtrack: ") and r.stderr.count("\n") == 1
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"schema": 99}')
    r = run_memtrack("--root", str(wrong))
    assert r.returncode == 2 and "schema" in r.stderr
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    r = run_memtrack("--root", str(junk))
    assert r.returncode == 2 and "not a capture archive" in r.stderr
    trunc = tmp_path / "t.tar.gz"
    trunc.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)
    r = run_memtrack("--root", str(trunc))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = run_memtrack("--kind", "bogus")
    assert r.returncode == 2 and "unknown kind" in r.stderr
    r = run_memtrack("--root", str(tmp_path), "--json", "--csv")
    assert r.returncode == 2 and "exclusive" in r.stderr


def test_broken_pipe_is_quiet(tmp_path):
    import subprocess
    import sys
    import os
    from livehelpers import SRC
    root = make_tree(tmp_path)
    env = dict(os.environ, PYTHONPATH=SRC)
    p = subprocess.run(f"{sys.executable} -m memtrack buffers --root {root} --all | head -c 10",
                       shell=True, capture_output=True, text=True, env=env)
    assert "Traceback" not in p.stderr and "Broken pipe" not in p.stderr


EXIT = r'''
import sys, threading, time
import memtrack.cli as cli
class Loud:
    def __del__(self):
        sys.stdout.write("freed\n")
kept = Loud()
def main():
    if sys.argv[1] == "thread":
        threading.Thread(target=time.sleep, args=(0.5,)).start()   # still running at the end
    sys.stdout.write("end\n")
    return 3
cli.main = main
cli.console()
'''


def test_the_command_leaves_its_snapshot_to_the_exit():
    """The memtrack command (cli.console) ends without freeing what it made: what is alive
    at the end is never freed one object at a time, and what it printed is flushed first;
    the exit code is main()'s. Where another thread might still run, the normal exit."""
    import os
    import subprocess
    import sys
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = dict(os.environ, PYTHONPATH=src)
    got = {mode: subprocess.run([sys.executable, "-c", EXIT, mode], capture_output=True, text=True,
                                env=env, timeout=60) for mode in ("plain", "thread")}
    assert {m: (p.stdout, p.returncode) for m, p in got.items()} == \
        {"plain": ("end\n", 3), "thread": ("end\nfreed\n", 3)}

