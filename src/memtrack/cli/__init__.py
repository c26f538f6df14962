"""memtrack command line: `memtrack [COMMAND] [options]`; no command = `ps`.

Each command is a module in memtrack/cli/commands/ defining NAME, HELP, add_arguments(parser)
and run(args) -> exit code; they are discovered, so adding a command touches no other file.
A command whose NAME is its module's name (with - for _) runs without the other modules
being imported (see _parser); any other NAME still works, through the full parser.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import threading
from typing import Iterable, List, Optional

from .. import __version__
from ..errors import MemtrackError
from .common import add_common

DEFAULT = "ps"


def _module_names() -> List[str]:
    from . import commands
    return [info.name for info in pkgutil.iter_modules(commands.__path__) if not info.name.startswith("_")]


def _commands(modnames: Optional[Iterable[str]] = None) -> dict:
    """{NAME: module} of these command modules (default: all), in listing order."""
    mods = {}
    for modname in _module_names() if modnames is None else modnames:
        mod = importlib.import_module(f"{__name__}.commands.{modname}")
        mods[mod.NAME] = mod
    return dict(sorted(mods.items(), key=lambda kv: (getattr(kv[1], "ORDER", 50), kv[0])))


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (argparse prints the whole usage block
    first): `memtrack: error: MESSAGE (memtrack show --help)`, exit 2. Subcommand parsers
    are of the same class (add_subparsers makes them so)."""

    def error(self, message):
        from ..views.table import printable        # the message may quote what was typed
        print(f"memtrack: error: {printable(message)} ({self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _top(parser_class=Parser):
    parser = parser_class(
        prog="memtrack",
        description="Which process holds how much shared-buffer memory (dma-buf, memfd, "
                    "POSIX/SysV shm, shared anonymous, ashmem). Without a command: `ps`.")
    parser.add_argument("--version", action="version", version=f"memtrack {__version__}")
    add_common(parser, suppress=False)
    return parser


def build_parser(mods: Optional[dict] = None):
    """The parser and {NAME: module}, with a subparser for each command module in `mods`
    (default: every one)."""
    parser = _top()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if mods is None:
        mods = _commands()
    for name, mod in mods.items():
        # resolve: a command may give a common option its own meaning (capture's -o,
        # dmabuf-dump's -b and -o as Android's tool has them); its own option wins
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           conflict_handler="resolve")
        add_common(p, suppress=True)
        mod.add_arguments(p)
    # `memtrack -p 1` and `memtrack --json` are `ps`: its own options must parse at top level too,
    # kept apart (BEFORE_COMMAND) so that main() can tell them from a command's own
    first = len(parser._actions)
    mods[DEFAULT].add_arguments(parser)
    for action in parser._actions[first:]:
        action.dest = BEFORE_COMMAND + action.dest
    return parser, mods


BEFORE_COMMAND = "before_command_"


def _options_before_command(parser, args, name: str) -> None:
    """ps's own options (-s, -r) given before the command: ps's, when the command is ps;
    refused before any other command (`memtrack -s pid buffers` used to drop -s silently)."""
    given = [a for a in parser._actions if a.dest.startswith(BEFORE_COMMAND) and hasattr(args, a.dest)]
    for action in given:
        value = getattr(args, action.dest)
        delattr(args, action.dest)
        if name != DEFAULT:
            opt = "/".join(action.option_strings)
            parser.error(f"{opt} before the command is an option of {DEFAULT}; {name} "
                         + ("takes it after its name" if _takes(parser, name, action.option_strings)
                            else "does not take it"))
        dest = action.dest[len(BEFORE_COMMAND):]
        if not hasattr(args, dest):          # given after `ps` too: that one wins
            setattr(args, dest, value)


def _takes(parser, name: str, option_strings) -> bool:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return any(o in action.choices[name]._option_string_actions for o in option_strings)
    return False


class _Unsure(Exception):
    pass


class _Probe(argparse.ArgumentParser):
    """The top-level options, then the first positional and all that follows: which command
    a command line names, as the full parser reads it. What it can't settle raises."""

    def __init__(self, **kwargs):
        super().__init__(**dict(kwargs, add_help=False))
        self.add_argument("-h", "--help", nargs=0, action=_UnsureAction)

    def error(self, message):
        raise _Unsure(message)


class _UnsureAction(argparse.Action):
    def __call__(self, *args, **kwargs):
        raise _Unsure("help")


def _parser(argv):
    """build_parser() for this command line. Importing every command module and building
    every subparser costs ~20 ms where modules are compiled at each start (more than the
    JSON of a big machine takes to write): when the command line names a command by its
    module's name (dmabuf_dump.py is dmabuf-dump), or none, only that module and ps are
    imported, and only their subparsers built. Help, errors, --adb (a command name after it
    is rewritten), `--` (argparse hands it to the subparsers) and a NAME that is not its
    module's name take the full parser."""
    modnames = {m.replace("_", "-"): m for m in _module_names()}
    default = modnames.get(DEFAULT)
    if default is not None and not {"-h", "--help", "--adb", "--"} & set(argv):
        ps = _commands([default])
        probe = _top(_Probe)
        probe.add_argument("command", nargs="?")
        probe.add_argument("rest", nargs=argparse.REMAINDER)
        ps[DEFAULT].add_arguments(probe)
        try:
            name = probe.parse_known_args(argv)[0].command
            name = DEFAULT if name is None else name
        except _Unsure:
            name = None
        if name in modnames:
            mods = _commands({default, modnames[name]})
            if name in mods:
                return build_parser(mods)
    return build_parser()


def _adb_before_command(argv, mods):
    """`memtrack --adb buffers`: the optional SERIAL of --adb must not swallow a command name."""
    out = list(argv)
    for i, a in enumerate(out[:-1]):
        if a == "--adb" and out[i + 1] in mods:
            out[i] = "--adb="
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _safe_stdout()
    try:
        parser, mods = _parser(argv)
        args = parser.parse_args(_adb_before_command(argv, mods))
        name = args.command or DEFAULT
        _options_before_command(parser, args, name)
        return mods[name].run(args) or 0
    except MemtrackError as exc:
        from ..views.table import printable      # it may quote a path or a name: one line
        print(f"memtrack: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except Exception as exc:  # a bug in memtrack: one line, the traceback on request
        if debug():
            raise
        from ..views.table import printable
        print(f"memtrack: internal error: {type(exc).__name__}: {printable(str(exc))} "
              "(set MEMTRACK_DEBUG=1 for the traceback)", file=sys.stderr)
        return 70


def console() -> None:
    """The memtrack command (the console script, python -m memtrack): main(), then the
    process ends at once. Freeing a big machine's snapshot object by object, as the
    interpreter's exit does, is work for nothing; so, once stdout and stderr are flushed and
    no other thread runs that the exit would wait for, os._exit."""
    rc = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(rc)      # let the interpreter's exit report (or quiet) what failed
    if all(t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        os._exit(rc)
    raise SystemExit(rc)


def debug() -> bool:
    """MEMTRACK_DEBUG=1 (or true, yes) shows the traceback of an internal error; 0, false,
    no or anything else does not."""
    return os.environ.get("MEMTRACK_DEBUG", "").strip().lower() in ("1", "true", "yes")


def _safe_stdout():
    # Names from other processes may hold bytes that are not UTF-8 (kept as surrogates):
    # write them as \udcXX, valid inside JSON strings, rather than fail or emit raw bytes.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):
            pass


def _quiet_stdout():
    # the reader went away (memtrack | head): be quiet, and keep Python quiet at exit
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
