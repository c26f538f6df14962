"""The command line parses the same whether every command module is imported (the full
parser) or only the one it names (what main() does when it can): same namespace, or the
same exit, output and error."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import pytest

from helpers.paths import SRC
from memtrack import cli


def outcome(make, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            parser, mods = make(argv)
            ns = parser.parse_args(cli._adb_before_command(argv, mods))
            result = ("ok", vars(ns), ns.command or cli.DEFAULT, mods[ns.command or cli.DEFAULT])
        except SystemExit as exc:
            result = ("exit", exc.code)
    return result + (out.getvalue(), err.getvalue())


def same(argv):
    full = outcome(lambda a: cli.build_parser(), argv)
    assert outcome(cli._parser, argv) == full
    return full


NAMES = list(cli._commands())
ARGVS = [[], ["--json"], ["-q", "--json", "--backend", "bpf"], ["--json", "-q", "--backend", "procfs", "-o", "x"],
         ["show", "12"], ["-p", "1,2", "show", "3", "--json"], ["show", "-p", "1", "3"], ["-s", "rss", "-r"],
         ["ps", "-s", "rss", "-r"], ["-s", "rss", "ps"], ["--kind", "dmabuf", "matrix", "--csv"],
         ["dmabuf-dump", "-b"], ["dmabuf-dump", "-o", "csv"], ["capture", "-o", "x.tgz"], ["diff", "a", "b"],
         ["export-trace", "h.db", "-o", "t.json"], ["record", "h.db"], ["report", "h.db"], ["top", "--once"],
         ["summary", "--by", "process"], ["tag", "--help"], ["textfile", "x"], ["serve"], ["gpu", "--json"],
         ["plot", "h.db", "-o", "x.png"], ["buffers", "--kind", "memfd,shm"], ["--version"], ["-h"], ["--help"],
         ["--he"], ["show", "-h"], ["show", "--he"], ["ps", "-h"], ["bogus"], ["--bogus"], ["show", "--bogus"],
         ["--root"], ["--backend", "x"], ["--kind", "nope"], ["-p", "x"], ["-p", "-1"], ["--", "show", "1"],
         ["--adb"], ["--adb", "buffers"], ["--adb", "SERIAL", "buffers"], ["buffers", "--adb", "show"],
         ["--ad", "show"], ["--ssh", "host", "show", "1"], ["--root", "show", "buffers"], ["--root=show"],
         ["-q", "--", "--json"], ["dmabuf_dump"], ["show", "1", "2"], ["--json", "--csv"]]


@pytest.mark.parametrize("argv", ARGVS, ids=" ".join)
def test_same_parse(argv):
    same(argv)


def test_every_command_parses_alone():
    for name in NAMES:
        assert same([name, "--help"])[0] == "exit"
        result = same([name])
        assert result[0] == "exit" or result[2] == name


def test_only_the_named_module_is_imported():
    code = ("import sys; from memtrack.cli import _parser; _parser(sys.argv[1:]); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('memtrack.cli.commands.'))))")
    for argv, want in (([], "ps"), (["--json", "-q"], "ps"), (["show", "1"], "ps show"),
                       (["dmabuf-dump"], "dmabuf_dump matrix ps")):
        out = subprocess.run([sys.executable, "-c", code] + argv, capture_output=True, text=True, check=True,
                             env=dict(os.environ, PYTHONPATH=SRC)).stdout.split()
        assert out == [f"memtrack.cli.commands.{m}" for m in want.split()], argv


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

TOKENS = NAMES + ["-p", "1", "1,2", "--kind", "dmabuf", "--json", "-q", "--root", "/nonexistent", "--backend",
                  "bpf", "-s", "rss", "-r", "-o", "x", "--adb", "--adb=", "--ssh", "h", "-h", "--help", "--he",
                  "--", "-1", "12", "--version", "--smaps", "-b", "-k", "--csv", "--rules", "--bogus", "-", "",
                  "--once", "--by", "process", "--ro", "-pq", "-p1", "--root=show", "--kind=dmabuf", "-o-",
                  "show=1", "-qh", "--json=1", "-rs", "pss"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=6))
def test_same_parse_generated(argv):
    same(argv)
