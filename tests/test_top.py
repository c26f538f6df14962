"""memtrack top under a real pseudo-terminal (and in a pipe)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from helpers.ptytop import PtyTop
from livehelpers import SRC, run_memtrack
from livekids import Kid

pytest.importorskip("rich")

@pytest.fixture
def kid():
    with Kid() as k:
        k.add("topmark", 65536)
        fd = k.add("second", 4096)
        k.map(fd)
        yield k


def row_of(text, pid):
    return [line for line in text.splitlines() if re.match(rf"\s*{pid}\s", line)]


def test_top_n3_shows_three_frames_and_restores_the_terminal(kid):
    t = PtyTop("-n", "3", "-d", "0.2", "-p", str(kid.pid))
    try:
        assert t.wait_exit() == 0
        text = t.text
        for i in (1, 2, 3):
            assert f"refresh {i}" in text
        assert "refresh 4" not in text
        rows = row_of(text, kid.pid)
        assert rows, text[-2000:]
        # 64 KiB + 4 KiB held alone: rss = pss = uss = 68 KiB, 2 buffers
        assert re.search(r"68\.0 KiB\s+68\.0 KiB\s+68\.0 KiB\s+0\s+0\s+2\s", rows[-1]), rows[-1]
        assert b"\x1b[?1049h" in t.raw and t.raw.rfind(b"\x1b[?1049l") > t.raw.rfind(b"\x1b[?1049h")
        assert t.raw.rfind(b"\x1b[?25h") > t.raw.rfind(b"\x1b[?25l")      # cursor shown again
        assert t.restored()
    finally:
        t.close()


def test_top_once_under_a_pty_prints_one_frame_inline(kid):
    t = PtyTop("--once", "-p", str(kid.pid))
    try:
        assert t.wait_exit() == 0
        assert b"\x1b[?1049h" not in t.raw             # no alternate screen for --once
        assert "refresh 1" in t.text and "refresh 2" not in t.text
        assert row_of(t.text, kid.pid)
        assert t.restored()
    finally:
        t.close()


def test_top_once_in_a_pipe(kid):
    r = run_memtrack("top", "--once", "-p", str(kid.pid))
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout
    lines = row_of(r.stdout, kid.pid)
    assert len(lines) == 1 and "68.0 KiB" in lines[0]
    assert r.stdout.splitlines()[3].split()[:4] == ["PID", "Rss", "Pss", "Uss"]


def test_top_header_figures_follow_the_kinds_shown(kid):
    """--kind memfd: the header's figures are memfd's, so no dma-buf total beside them."""
    heads = {}
    for kind in ("memfd", "dmabuf"):
        r = run_memtrack("top", "--once", "--kind", kind, "-p", str(kid.pid))
        assert r.returncode == 0, r.stderr
        heads[kind] = r.stdout.splitlines()[1]
    assert heads["memfd"].startswith("held by processes: ")
    assert "dma-buf exported" not in heads["memfd"]
    assert "dma-buf exported" in heads["dmabuf"]


@pytest.mark.parametrize("key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_top_quits_cleanly_on_q_and_ctrl_c(kid, key):
    t = PtyTop("-d", "0.2", "-p", str(kid.pid))
    try:
        t.wait_text("refresh 2")
        t.send(b"u")                                    # sort keys act without a rescan
        t.wait_text("sort: uss")
        t.send(key)
        assert t.wait_exit() == 0
        assert t.raw.rfind(b"\x1b[?1049l") > t.raw.rfind(b"\x1b[?1049h")
        assert t.restored()
        assert "Traceback" not in t.text
    finally:
        t.close()


def test_top_shows_acquire_and_release_events(kid):
    t = PtyTop("-d", "0.2", "-p", str(kid.pid))
    try:
        comm = open(f"/proc/{kid.pid}/comm").read().strip()
        t.wait_text("refresh 1")
        with Kid() as other:                            # not in -p: its events stay out
            other.add("elsewhere", 4096)
            fd = kid.add("lateone", 4096)
            t.wait_text(f"{kid.pid} {comm}: acquired fd {fd} memfd:")
        assert "'lateone'" in t.text and "'elsewhere'" not in t.text and f"{other.pid} {comm}" not in t.text
        kid.close(fd)
        t.wait_text(f"{kid.pid} {comm}: released fd {fd} memfd:")
        t.send(b"q")
        assert t.wait_exit() == 0
    finally:
        t.close()


def test_top_without_rich_says_how_to_get_it():
    code = ("import sys; sys.modules['rich'] = None; sys.modules['rich.console'] = None\n"
            "from memtrack.cli import main; sys.exit(main(['top', '--once']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=SRC))
    assert r.returncode == 2
    assert "pip install" in r.stderr and "rich" in r.stderr and r.stderr.count("\n") == 1




def last_frame_with(t, needle, timeout=30):
    """The latest complete frame, once it shows needle."""
    end = time.monotonic() + timeout
    while True:
        frame = t.text.split("memtrack top")[-1]
        if needle in frame and "keys:" in frame:
            return frame
        if time.monotonic() > end:
            raise AssertionError(f"no complete frame with {needle!r}; got:\n{t.text[-3000:]}")
        t.pump()


def test_top_kind_key_filters_rows(kid):
    t = PtyTop("-d", "0.3", "-p", str(kid.pid))
    try:
        assert row_of(last_frame_with(t, "refresh 1"), kid.pid)
        t.send(b"k")                                    # all -> dmabuf: the kid holds none
        assert not row_of(last_frame_with(t, "kind: dmabuf"), kid.pid)
        t.send(b"k")                                    # -> memfd: it is back
        assert row_of(last_frame_with(t, "kind: memfd"), kid.pid)
        t.send(b"q")
        assert t.wait_exit() == 0
    finally:
        t.close()
