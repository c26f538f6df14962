"""memtrack command line: `memtrack [COMMAND] [options]`; no command = `ps`.

Each command is a module in memtrack/cli/commands/ defining NAME, HELP, add_arguments(parser)
and run(args) -> exit code; they are discovered, so adding a command touches no other file.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import pkgutil
import sys

from .. import __version__
from ..errors import MemtrackError
from .common import add_common

DEFAULT = "ps"


def _commands():
    from . import commands
    mods = {}
    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        mods[mod.NAME] = mod
    return dict(sorted(mods.items(), key=lambda kv: (getattr(kv[1], "ORDER", 50), kv[0])))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="memtrack",
        description="Which process holds how much shared-buffer memory (dma-buf, memfd, "
                    "POSIX/SysV shm, shared anonymous, ashmem). Without a command: `ps`.")
    parser.add_argument("--version", action="version", version=f"memtrack {__version__}")
    add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    mods = _commands()
    for name, mod in mods.items():
        # resolve: a command may give a common option its own meaning (capture's -o,
        # dmabuf-dump's -b and -o as Android's tool has them); its own option wins
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           conflict_handler="resolve")
        add_common(p, suppress=True)
        mod.add_arguments(p)
    # `memtrack -p 1` and `memtrack --json` are `ps`: its own options must parse at top level too
    mods[DEFAULT].add_arguments(parser)
    return parser, mods


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
        parser, mods = build_parser()
        args = parser.parse_args(_adb_before_command(argv, mods))
        name = args.command or DEFAULT
        return mods[name].run(args) or 0
    except MemtrackError as exc:
        print(f"memtrack: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except Exception as exc:  # a bug in memtrack: one line, the traceback on request
        if os.environ.get("MEMTRACK_DEBUG"):
            raise
        print(f"memtrack: internal error: {type(exc).__name__}: {exc} "
              "(set MEMTRACK_DEBUG=1 for the traceback)", file=sys.stderr)
        return 70
    finally:
        gc.unfreeze()           # get_snapshot froze the snapshot's objects for the command


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
