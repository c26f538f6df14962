"""Bad input on the command line: one line on stderr, a non-zero exit, never a traceback;
and the options a command cannot honour are refused, not ignored."""
from __future__ import annotations

import pytest

from memtrack import cli

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
