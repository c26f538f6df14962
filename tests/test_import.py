"""Importing memtrack (and memtrack.cli) does no work: it reads no command line, no
environment and no user id, and starts no thread; only the memtrack command does (cli.console)."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import SRC

WATCH = r'''
import os, sys, threading
seen = []
PKG = os.path.join(sys.argv[1], "memtrack") + os.sep

def ours():
    """Whether memtrack's code is on the stack (the standard library may read what it likes)."""
    f = sys._getframe(2)
    while f is not None:
        if f.f_code.co_filename.startswith(PKG):
            return True
        f = f.f_back
    return False

def note(what):
    if ours():
        seen.append(what)

class Argv(list):
    def __getitem__(self, i):
        note("sys.argv")
        return list.__getitem__(self, i)
    def __iter__(self):
        note("sys.argv")
        return list.__iter__(self)
    def __len__(self):
        note("sys.argv")
        return list.__len__(self)

class Environ(dict):
    def __getitem__(self, k):
        note(f"environ[{k}]")
        return dict.__getitem__(self, k)
    def get(self, k, default=None):
        note(f"environ[{k}]")
        return dict.get(self, k, default)
    def __contains__(self, k):
        note(f"environ[{k}]")
        return dict.__contains__(self, k)

def ids(name, real):
    def f(*a):
        note(name)
        return real(*a)
    return f

def hook(event, args):
    if "thread" in event:
        seen.append(event)          # any thread started, by whichever code

sys.argv = Argv(["memtrack", "--json"])      # what the CLI would be started with, as root
if hasattr(sys, "orig_argv"):
    sys.orig_argv = Argv([sys.executable, "-m", "memtrack", "--json"])
os.environ = Environ(os.environ)
for name in ("geteuid", "getuid", "getegid", "getgid", "getresuid"):
    if hasattr(os, name):
        setattr(os, name, ids(name, getattr(os, name)))
sys.addaudithook(hook)
import memtrack
import memtrack.cli
threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
print(repr((sorted(set(seen)), threads)))
'''


def test_import_does_no_work():
    env = dict(os.environ, PYTHONPATH=SRC)
    p = subprocess.run([sys.executable, "-c", WATCH, SRC], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == repr(([], []))
