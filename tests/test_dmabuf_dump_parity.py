"""dmabuf-dump where it used to part from Android's dmabuf_dump (issue 14, part 3): -a with -b,
buffers of unknown size, a kernel table that lists less than processes hold, and the fds of
a Linux 5.3-5.13 capture without the fdstat sidecar. Trees in the exact kernel formats
(kfixture) and the real H100 capture."""
from __future__ import annotations

import contextlib
import io
import os

import pytest

from helpers.paths import REAL_CAPTURE
from kfixture import Tree
from memtrack.build import TWICE_NOTE
from memtrack.cli import main

SEP = "-----------------------"


@pytest.fixture(autouse=True)
def no_user_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def run_cli(root, *argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv) + ["--root", root])
    return rc, out.getvalue(), err.getvalue()


def test_all_and_per_buffer_together_as_android():
    """Android's main(): the per-buffer stats, then "\\n\\n", then the table."""
    for fmt in ([], ["-o", "csv"]):
        rc, both, err = run_cli(REAL_CAPTURE, "dmabuf-dump", "-a", "-b", *fmt)
        assert rc == 0, err
        per_buffer = run_cli(REAL_CAPTURE, "dmabuf-dump", "-b", *fmt)[1]
        table = run_cli(REAL_CAPTURE, "dmabuf-dump", "-a", *fmt)[1]
        assert both == per_buffer + "\n\n" + table
    rc, out, err = run_cli(REAL_CAPTURE, "dmabuf-dump", "-ab", "416")     # still no PID with them
    assert rc == 2 and err == "memtrack: dmabuf-dump: -a and -b take no PID\n"


def unknown_tree(tmp_path):
    """pid 10 maps dma-buf 9 only (no fd, no kernel table, no mapstat: size unknown) and holds
    dma-buf 5 (8 KiB) by fd; pid 11 holds 5 too."""
    t = Tree()
    t.proc(10, "camera").dmabuf(3, 5, 8192, "system").map(
        0x7f0000000000, 0x7f0000400000, "/dmabuf:preview", "00:0c", 9)
    t.proc(11, "viewer").dmabuf(4, 5, 8192, "system")
    return t.write_dir(str(tmp_path / "root"))


def test_unknown_size_is_not_zero_kb(tmp_path):
    root = unknown_tree(tmp_path)
    rc, out, err = run_cli(root, "dmabuf-dump")
    assert rc == 0
    lines = out.splitlines()
    assert "%22s %13s kB %13s kB %16d %16d  %22s" % ("preview", "?", "?", 1, 9, "<unknown>") in lines
    assert "%22s %13s kB %13s kB %16s" % ("PROCESS TOTAL", "8+", "4+", "") in lines
    assert "%22s %13s kB %13s kB %16s" % ("PROCESS TOTAL", "8", "4", "") in lines     # pid 11: all known
    assert lines[-2] == "dmabuf total: 8+ kB kernel_rss: 0 kB userspace_rss: 16+ kB userspace_pss: 8+ kB"
    assert lines[-1].startswith("+ 1 dma-buf of unknown size")
    assert " 0 kB" not in out.replace("kernel_rss: 0 kB", "")

    rc, out, _ = run_cli(root, "dmabuf-dump", "-a")
    lines = out.splitlines()
    assert "%16d |%13s kB |%16d |%16d |" % (9, "?", 0, 1) + "%9d(%6d) refs |" % (0, 1) + "%22s |" % "--" \
        in lines
    assert "%-16s  %13s kB |%16s |%16s |" % ("TOTALS", "8+", "n/a", "n/a") + "%19s kB |" % "8+" + \
        "%19s kB |" % "8" in lines
    assert lines[-1].startswith("+ 1 dma-buf of unknown size")

    rc, out, _ = run_cli(root, "dmabuf-dump", "-b")
    lines = out.splitlines()
    assert "%16d |%16s | %16s " % (9, "?", "") in lines
    assert "Total DMA-BUF count: 2, Total DMA-BUF size(bytes): 8192+" in lines

    rc, out, err = run_cli(root, "dmabuf-dump", "-o", "csv")      # CSV: an empty field, a note
    assert '"preview",,,1,9,<unknown>' in out.splitlines()
    assert "+ 1 dma-buf" not in out and "1 dma-buf of unknown size" in err


def test_kernel_table_below_userspace_warns(tmp_path):
    """An empty sysfs stats directory (or one missing buffers) lists less than processes hold:
    Android's warning, on its line before the totals."""
    t = Tree()
    t.proc(20, "app").dmabuf(3, 7, 3072, "system")
    root = t.write_dir(str(tmp_path / "empty"))
    os.makedirs(os.path.join(root, "sys/kernel/dmabuf/buffers"))
    rc, out, err = run_cli(root, "dmabuf-dump")
    assert rc == 0
    assert out.splitlines()[-2:] == [
        "Warning: Total dmabufs < userspace dmabufs",
        "dmabuf total: 0 kB kernel_rss: 0 kB userspace_rss: 3 kB userspace_pss: 3 kB"]
    rc, out, err = run_cli(root, "dmabuf-dump", "-o", "csv")
    assert "Warning" not in out and "Total dmabufs < userspace dmabufs" in err

    t = Tree()                          # partial: the table has another buffer, not the held one
    t.proc(20, "app").dmabuf(3, 7, 3072, "system")
    t.sysfs_buffer(8, 1024, "system")
    root = t.write_dir(str(tmp_path / "partial"))
    rc, out, err = run_cli(root, "dmabuf-dump")
    assert out.splitlines()[-2] == "Warning: Total dmabufs < userspace dmabufs"

    t = Tree()                          # a whole table: no warning
    t.proc(20, "app").dmabuf(3, 7, 3072, "system")
    t.sysfs_buffer(7, 3072, "system")
    rc, out, err = run_cli(t.write_dir(str(tmp_path / "whole")), "dmabuf-dump")
    assert "Warning" not in out + err


def test_fd_without_inode_beside_a_mapping_is_noted(tmp_path):
    """Linux 5.3-5.13: fdinfo has no ino: line; without fdstat the fd's buffer has no inode,
    while the maps line names it: one buffer shows as two. The note says so."""
    t = Tree()
    t.proc(30, "camera").dmabuf(3, 9, 4096, "system", with_ino=False).map(
        0x7f0000000000, 0x7f0000001000, "/dmabuf:", "00:0c", 9)
    t.proc(31, "encoder").dmabuf(3, 9, 4096, "system", with_ino=False)    # no map: not counted twice
    t.bufinfo([{"size": 4096, "exporter": "system", "ino": 9}])
    root = t.write_tar(str(tmp_path / "old.tar.gz"))
    rc, out, err = run_cli(root, "dmabuf-dump")
    assert rc == 0
    assert "memtrack: note: " + TWICE_NOTE % 1 + "\n" in err
    assert "5.3-5.13" in TWICE_NOTE

    t = Tree()                          # with the ino: line (5.14+): one buffer, no note
    t.proc(30, "camera").dmabuf(3, 9, 4096, "system").map(
        0x7f0000000000, 0x7f0000001000, "/dmabuf:", "00:0c", 9)
    rc, out, err = run_cli(t.write_dir(str(tmp_path / "new")), "dmabuf-dump")
    assert "counts twice" not in err
