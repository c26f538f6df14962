"""Starting and stopping the live scenario (helpers/scenario.py) for tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")


@contextmanager
def scenario(script="scenario.py", preexec=None):
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "helpers", script)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=preexec)
    try:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{script} failed to start")
        yield json.loads(line)
    finally:
        proc.stdin.close()
        proc.wait(timeout=20)


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def nobody_copy(prefix="memtrack-nobody-", interpreters=None, drop=NOBODY):
    """(interpreter, directory) for running memtrack as the nobody user: a copy of the package
    nobody may read (the checkout may be under /root) in a new directory (the caller removes
    it), and the first of `interpreters` (default: this one, then the system's python3) that
    nobody can run and import it with. None where there is none (not root, no setpriv)."""
    import shutil
    import tempfile
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


def memtrack_cmd(*args):
    return [sys.executable, "-m", "memtrack", *args]


def run_memtrack(*args, env_extra=None, check=False, prefix=(), **kw):
    """memtrack ARGS from src/ (prefix: a command to run it under, setpriv say)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    if env_extra:
        env.update(env_extra)
    return subprocess.run(list(prefix) + memtrack_cmd(*args), capture_output=True, text=True,
                          env=env, check=check, **kw)
