"""Running memtrack as the nobody user (uid 65534), the one way every test drops to it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from helpers.paths import SRC

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
SKIP = "needs root, setpriv and an interpreter the nobody user can run"


def nobody_copy(prefix="memtrack-nobody-", interpreters=None, drop=NOBODY):
    """(interpreter, directory) for running memtrack as the nobody user: a copy of the package
    nobody may read (the checkout may be under /root) in a new directory (the caller removes
    it), and the first of `interpreters` (default: this one, then the system's python3) that
    nobody can run and import it with. None where there is none (not root, no setpriv)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)
    shutil.copytree(os.path.join(SRC, "memtrack"), os.path.join(d, "memtrack"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for top, dirs, files in os.walk(d):
        for x in dirs:
            os.chmod(os.path.join(top, x), 0o755)
        for x in files:
            os.chmod(os.path.join(top, x), 0o644)
    env = dict(os.environ, PYTHONPATH=d)
    for exe in interpreters or (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run(drop + [exe, "-c", "import sys, sqlite3, memtrack; assert sys.version_info >= (3, 9)"],
                               env=env, cwd=d, capture_output=True)
        if probe.returncode == 0:
            return exe, d
    shutil.rmtree(d, ignore_errors=True)
    return None


class Nobody:
    """The `nobody` fixture: exe, an interpreter nobody can run; pkg, a directory holding a
    copy of memtrack nobody may read (PYTHONPATH and working directory of its runs)."""

    def __init__(self, exe, pkg):
        self.exe, self.pkg = exe, pkg
        self.env = dict(os.environ, PYTHONPATH=pkg)

    def memtrack(self, *args, drop=NOBODY, **kw):
        """memtrack ARGS as nobody (drop: the setpriv command that makes it so)."""
        kw = dict(dict(capture_output=True, text=True, env=self.env, cwd=self.pkg, timeout=120), **kw)
        return subprocess.run(drop + [self.exe, "-m", "memtrack", *args], **kw)

    def pkg_for_this_interpreter(self):
        """pkg, for tests that run this very interpreter (sys.executable) as nobody; skips
        where nobody can run only another one."""
        import pytest
        if self.exe != sys.executable:
            pytest.skip(SKIP)
        return self.pkg
