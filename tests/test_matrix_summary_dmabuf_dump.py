"""matrix, summary and dmabuf-dump on the real H100 capture, against numbers worked out by
hand from its files (tests/data/h100-cuda-dmabuf.tar.gz):

  dmabuf:1     2 MiB nv_dmabuf, fds in 416 and 454 (fd 37 each), count 2, no map
  sysv:0       3 MiB, mapped once in each of 416, 454, 455 (nattch 3)
  memfd:2052   wl_shm-pool: fds 38,39 in 416 and 454, one map in each of the three
  memfd:2053   pipewire-buffer: fd 40 in 416 and 454, fds 3,4 in 455, no map
  shm:2        probe-shm: fds 41,42 in 416 and 454, one map in each of the three
  shmem:2048..2051, 2054: one map in each of the three
The capture has no fdstat sidecar: memfd/shm/shmem sizes are unknown (8 buffers).
"""
from __future__ import annotations

import contextlib
import io
import json

import pytest

from helpers.paths import REAL_CAPTURE
from memtrack.cli import main
from memtrack.procfs import scan
from memtrack.sources import open_source
from memtrack.summarize import grand_total, summarize

MiB = 1 << 20


@pytest.fixture(autouse=True)
def no_user_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv) + ["--root", REAL_CAPTURE])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def real():
    src = open_source(REAL_CAPTURE)
    try:
        return scan(src)
    finally:
        src.close()


# -- matrix ----------------------------------------------------------------------------------

def test_matrix_csv():
    rc, out, _ = run_cli("matrix", "--csv")
    assert rc == 0
    assert out.splitlines() == [
        "buffer,kind,inode,size,nr_procs,python3:416,python3:454,python3:455,name",
        "sysv:0,sysv,0,3145728,3,0(1),0(1),0(1),0x00000000",
        "dmabuf:1,dmabuf,1,2097152,2,1(0),1(0),,",
        "memfd:2052,memfd,2052,,3,2(1),2(1),0(1),wl_shm-pool",
        "memfd:2053,memfd,2053,,3,1(0),1(0),2(0),pipewire-buffer",
        "shm:2,shm,2,,3,2(1),2(1),0(1),probe-shm",
    ] + [f"shmem:{i},shmem,{i},,3,0(1),0(1),0(1)," for i in (2048, 2049, 2050, 2051, 2054)]


def test_matrix_table_totals_are_rss_per_process():
    rc, out, _ = run_cli("matrix", "-b", "--kind", "dmabuf,sysv")
    lines = out.splitlines()
    assert lines[0].split() == ["Kind", "Inode", "Size", "nr_procs", "python3:416", "python3:454",
                                "python3:455", "Name"]
    assert lines[1].split() == ["sysv", "0", "3145728", "3", "0(1)", "0(1)", "0(1)", "0x00000000"]
    assert lines[2].split() == ["dmabuf", "1", "2097152", "2", "1(0)", "1(0)", "--", "-"]
    # 416 and 454: 2 MiB + 3 MiB; 455: 3 MiB
    assert lines[-1].split()[:5] == ["TOTAL", "5242880", "5242880", "5242880", "3145728"]


# -- summary ---------------------------------------------------------------------------------

def test_summary_by_kind_reconciles(real):
    rows = summarize(real, "kind")
    assert [tuple(r) for r in rows] == [("sysv", 1, 3 * MiB), ("dmabuf", 1, 2 * MiB),
                                        ("(unknown size)", 8, None)]
    assert tuple(grand_total(real)) == ("TOTAL", 10, 5 * MiB)
    assert sum(r.bytes or 0 for r in rows) == grand_total(real).bytes
    assert sum(r.buffers for r in rows) == grand_total(real).buffers


def test_summary_by_process_splits_pss(real):
    rows = summarize(real, "process")
    # dma-buf 2 MiB over 416, 454; SysV 3 MiB over the three
    assert [tuple(r) for r in rows] == [("416 python3", 2, MiB + MiB), ("454 python3", 2, 2 * MiB),
                                        ("455 python3", 1, MiB), ("(unknown size)", 8, None)]
    assert sum(r.bytes or 0 for r in rows) == 5 * MiB


def test_summary_by_category_exporter_name_cli():
    rc, out, _ = run_cli("summary", "--by", "category", "--csv")
    assert rc == 0
    assert out.splitlines() == ["category,buffers,bytes", "OTHER,1,3145728", "GL,1,2097152",
                                "(unknown size),8,", "TOTAL,10,5242880"]
    rc, out, _ = run_cli("summary", "--by", "exporter", "--json")
    doc = json.loads(out)
    assert doc["rows"] == [{"group": "(none)", "buffers": 1, "bytes": 3 * MiB},
                           {"group": "nv_dmabuf", "buffers": 1, "bytes": 2 * MiB},
                           {"group": "(unknown size)", "buffers": 8, "bytes": None}]
    assert doc["total"] == {"buffers": 10, "bytes": 5 * MiB}
    rc, out, _ = run_cli("summary", "--by", "name")
    assert [line.split()[0] for line in out.splitlines()[1:3]] == ["0x00000000", "(unnamed)"]
    assert out.splitlines()[-1].split() == ["TOTAL", "10", "5.0", "MiB"]


def test_summary_kernel_only_row(tmp_path):
    import kfixture
    t = kfixture.Tree()
    t.proc(1, "a").dmabuf(3, ino=5, size=4096, exporter="system")
    t.bufinfo([{"size": 4096, "exporter": "system", "ino": 5},
               {"size": 8192, "exporter": "system", "ino": 6}])
    t.sysv([{"shmid": 9, "size": 65536, "nattch": 0}])
    src = open_source(t.write_dir(str(tmp_path / "r")))
    snap = scan(src)
    rows = summarize(snap, "exporter")
    assert [tuple(r) for r in rows] == [("system", 1, 4096), ("(kernel only)", 2, 8192 + 65536)]
    assert grand_total(snap).bytes == 4096 + 8192 + 65536


# -- dmabuf-dump -----------------------------------------------------------------------------

def head(pid):
    return ["%16s:%-5d" % ("python3", pid),
            "%22s %16s %16s %16s %16s %22s" % ("Name", "Rss", "Pss", "nr_procs", "Inode", "Exporter")]


BUF_LINE = "%22s %13d kB %13d kB %16d %16d  %22s" % ("<unknown>", 2048, 1024, 2, 1, "nv_dmabuf")
TOTAL_LINE = "%22s %13d kB %13d kB %16s" % ("PROCESS TOTAL", 2048, 1024, "")


def test_dmabuf_dump_per_process():
    rc, out, _ = run_cli("dmabuf-dump")
    assert rc == 0
    assert out.splitlines() == (head(416) + [BUF_LINE, TOTAL_LINE, "-" * 22] +
                                head(454) + [BUF_LINE, TOTAL_LINE, "-" * 22] +
                                ["dmabuf total: 2048 kB kernel_rss: 0 kB userspace_rss: 4096 kB "
                                 "userspace_pss: 2048 kB"])


def test_dmabuf_dump_one_pid_keeps_the_real_pss():
    rc, out, _ = run_cli("dmabuf-dump", "454")
    assert out.splitlines() == head(454) + [BUF_LINE, TOTAL_LINE, "-" * 22] + [
        "dmabuf total: 2048 kB kernel_rss: 0 kB userspace_rss: 2048 kB userspace_pss: 1024 kB"]
    rc, out, _ = run_cli("dmabuf-dump", "455")      # holds no dma-buf: Android's words
    assert rc == 0 and out == "dmabuf info not found ¯\\_(ツ)_/¯\n"


def test_dmabuf_dump_table():
    rc, out, _ = run_cli("dmabuf-dump", "-a")
    assert out.split("\n") == [
        "",
        "----------------------- DMA-BUF Table buffer x process --------------------------",
        "    Dmabuf Inode |            Size |   Fd Ref Counts |  Map Ref Counts |"
        "%16s:%-5d |%16s:%-5d |" % ("python3", 416, "python3", 454),
        "%16d |%13d kB |%16d |%16d |" % (1, 2048, 2, 0) + "%9d(%6d) refs |" % (1, 0) * 2,
        "------------------------------------",
        "%-16s  %13d kB |%16s |%16s |" % ("TOTALS", 2048, "n/a", "n/a") + "%19d kB |" % 2048 * 2,
        ""]


def test_dmabuf_dump_per_buffer_and_csv():
    sep = "-----------------------"
    rc, out, _ = run_cli("dmabuf-dump", "-b")
    assert out.split("\n") == [
        "", "", f"{sep} DMA-BUF per-buffer stats {sep}",
        "    Dmabuf Inode |     Size(bytes) |    Exporter Name                    |",
        "%16d |%16d | %16s " % (1, 2097152, "nv_dmabuf"),
        "", "", f"{sep} DMA-BUF exporter stats {sep}",
        "      Exporter Name              | Total Count |     Total Size(bytes)   |",
        "%32s | %12d| %d" % ("nv_dmabuf", 1, 2097152),
        "", "", f"{sep} DMA-BUF total stats {sep}",
        "Total DMA-BUF count: 1, Total DMA-BUF size(bytes): 2097152", ""]
    rc, out, _ = run_cli("dmabuf-dump", "-o", "csv")
    assert out.splitlines()[:4] == ["\tpython3:416", '"Name","Rss(kB)","Pss(kB)","nr_procs","Inode","Exporter"',
                                    '"<unknown>",2048,1024,2,1,nv_dmabuf', ""]
    assert out.splitlines()[-3:] == ["\tTOTALS", '"dmabuf total (kB)","kernel_rss (kB)","userspace_rss (kB)",'
                                     '"userspace_pss (kB)"', "2048,0,4096,2048"]


def test_dmabuf_dump_usage_errors():
    rc, out, err = run_cli("dmabuf-dump", "-a", "416")
    assert rc == 2 and out == "" and err == "memtrack: dmabuf-dump: -a and -b take no PID\n"
    rc, out, err = run_cli("dmabuf-dump", "--bytes")        # the common --bytes still parses
    assert rc == 0


def test_csv_on_every_table_view():
    rc, out, _ = run_cli("dmabuf-dump", "--csv")
    assert out == run_cli("dmabuf-dump", "-o", "csv")[1]
    for cmd in (["ps"], ["buffers"], ["matrix"], ["summary"], ["gpu"], ["show", "416"]):
        rc, out, _ = run_cli(*cmd, "--csv")
        assert rc == 0 and out.count("\n") >= 1 and "," in out.splitlines()[0], cmd
