"""Tables fit the terminal (issue 17, views): on a real 80-column pty no table row is wider
than the terminal (the name column is cut, as ps and top cut it); --wide, or a pipe, gives
every row whole. memtrack runs in a child process whose stdout is the pty's slave side,
its window size set with TIOCSWINSZ, so the isatty and size paths are the real ones."""
from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import unicodedata

import pytest

from helpers.paths import REAL_CAPTURE, SRC
from kfixture import Tree


def cells(s: str) -> int:
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in s)


def env(**extra):
    e = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    e.update(PYTHONPATH=SRC, XDG_CONFIG_HOME="/nonexistent", PYTHONIOENCODING="utf-8", **extra)
    return e


def on_pty(args, columns=80, **extra) -> str:
    """memtrack ARGS with stdout on a pty of this many columns; what it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR                   # keep "\n" as written
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    p = subprocess.Popen([sys.executable, "-m", "memtrack", *args], stdout=slave,
                         stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env(**extra))
    os.close(slave)
    chunks = []
    while True:
        try:
            b = os.read(master, 65536)
        except OSError:                          # EIO: the child closed the slave
            break
        if not b:
            break
        chunks.append(b)
    os.close(master)
    assert p.wait(timeout=60) == 0
    return b"".join(chunks).decode()


def on_pipe(args, **extra) -> str:
    r = subprocess.run([sys.executable, "-m", "memtrack", *args], capture_output=True, text=True,
                       env=env(**extra), timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def table_rows(text, first=None):
    """The lines of the table: from its title line (the one starting with `first`, else the
    first line) to its footer row (the one after the line of dashes), or to the end."""
    lines = text.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith(first)) if first else 0
    dashes = [i for i, x in enumerate(lines) if i > start and x and set(x) <= {"-", " "}]
    return lines[start:dashes[0] + 2] if dashes else lines[start:]


CASES = [(["ps"], None), (["buffers"], None), (["show", "416"], "Kind"), (["matrix"], None),
         (["summary", "--by", "name"], None)]


@pytest.mark.parametrize("args,last", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_rows_fit_an_80_column_terminal(args, last):
    whole = on_pipe(args + ["--root", REAL_CAPTURE], COLUMNS="80")     # a pipe: whole rows
    rows = table_rows(whole, last)
    if args[0] != "summary":
        assert max(map(cells, rows)) > 80, "the case must have rows wider than the terminal"
    cut = on_pty(args + ["--root", REAL_CAPTURE])
    got = table_rows(cut, last)
    assert len(got) == len(rows) and max(map(cells, got)) <= 80
    for g, w in zip(got, rows):
        assert g == w or (g.endswith("…") and w.startswith(g[:-1]) and cells(g) == 80) or \
            (set(g) <= {"-", " "} and w.startswith(g) and cells(g) == 80)
    # --wide on the same terminal: the whole rows
    assert on_pty(args + ["--root", REAL_CAPTURE, "--wide"]) == whole


def test_ps_cuts_the_name_not_the_figures():
    whole = table_rows(on_pipe(["ps", "--root", REAL_CAPTURE]))
    name_at = whole[0].index("Name")
    columns = name_at + 8                 # room for the figures and a few of the name's cells
    rows = table_rows(on_pty(["ps", "--root", REAL_CAPTURE], columns=columns))
    assert len(rows) == len(whole) == 6
    assert all(cells(g) <= columns for g in rows) and any(g.endswith("…") for g in rows)
    for g, w in zip(rows, whole):
        assert g[:name_at] == w[:name_at] and w[name_at:].startswith(g[name_at:].rstrip("…"))


def test_wide_characters_count_two_cells(tmp_path):
    """A name of East Asian wide characters (two cells each) still fits; COLUMNS, where set,
    is the width (as ps reads it)."""
    t = Tree()
    name = "表示サーバー" * 10
    t.proc(7, "app", cmdline=name).memfd(3, "pool", 40, size=1 << 20)
    t.proc(8, "app2", cmdline="x" * 200).memfd(3, "pool", 40, size=1 << 20)
    root = t.write_dir(str(tmp_path / "root"))
    for width in (80, 61):
        out = on_pty(["ps", "--root", root], columns=200, COLUMNS=str(width))
        rows = table_rows(out)
        assert max(map(cells, rows)) <= width
        assert any(cells(r) in (width - 1, width) and r.endswith("…") and "表示" in r for r in rows)
    assert any(name in r for r in on_pipe(["ps", "--root", root]).splitlines())


def test_wide_lifts_the_name_cap(tmp_path):
    """Names are capped at 100 characters in a pipe, as before; --wide gives them whole."""
    t = Tree()
    t.proc(8, "app", cmdline="y" * 300).memfd(3, "pool", 40, size=1 << 20)
    root = t.write_dir(str(tmp_path / "root"))
    assert "y" * 300 not in on_pipe(["ps", "--root", root])
    assert "y" * 300 in on_pipe(["ps", "--root", root, "--wide"])
    assert "y" * 300 in on_pty(["ps", "--root", root, "-w"], columns=80)


def test_clip_counts_cells():
    from memtrack.util.text import clip
    assert clip("abc", 3) == "abc" and clip("abcd", 3) == "ab…"
    assert clip("表示表示", 5) == "表示…" and clip("表示表示", 4) == "表…"
    assert clip("e\u0301" * 5, 5) == "e\u0301" * 5          # combining marks take no cell
    assert clip("abcd", 1) == "…" and clip("abcd", 0) == ""
