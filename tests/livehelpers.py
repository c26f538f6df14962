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
