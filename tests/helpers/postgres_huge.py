"""A throwaway PostgreSQL server with huge_pages=on, for the huge-page holdings test: its
shared_buffers segment lives in /anon_hugepage (deleted). Run as nobody (setpriv) in a temp
directory, on a private port and socket directory, and stopped after."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from typing import List, Optional

NOBODY = 65534


def find_bindir() -> Optional[str]:
    """The newest /usr/lib/postgresql/*/bin holding initdb and postgres, or None."""
    found = [d for d in glob.glob("/usr/lib/postgresql/*/bin")
             if os.access(os.path.join(d, "initdb"), os.X_OK)
             and os.access(os.path.join(d, "postgres"), os.X_OK)]
    return max(found, key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0,
               default=None)


def _as_nobody(argv, **kw):
    setpriv = shutil.which("setpriv")
    return [setpriv, "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", *argv], kw


def server_pids(postmaster: int) -> List[int]:
    """The postmaster and its children."""
    out = [postmaster]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                out.append(int(d))
    return sorted(out)


@contextmanager
def huge_server(bindir: str, shared_buffers: str = "16MB"):
    """A running server; yields its postmaster pid. Raises RuntimeError (with the log) if it
    does not start: with huge_pages=on, that is what a kernel without enough huge pages does."""
    top = tempfile.mkdtemp(prefix="memtrack-pg-huge-")
    os.chmod(top, 0o755)
    data, sock = os.path.join(top, "data"), os.path.join(top, "sock")
    os.mkdir(sock)
    os.chown(top, NOBODY, NOBODY)
    os.chown(sock, NOBODY, NOBODY)
    log = os.path.join(top, "log")
    proc = None
    try:
        argv, _ = _as_nobody([os.path.join(bindir, "initdb"), "-D", data, "-A", "trust", "-U", "postgres"])
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=top)
        if r.returncode:
            raise RuntimeError("initdb failed: " + (r.stderr or r.stdout)[-500:])
        port = str(20000 + os.getpid() % 20000)
        argv, _ = _as_nobody([os.path.join(bindir, "postgres"), "-D", data, "-k", sock, "-p", port,
                              "-c", "listen_addresses=", "-c", "huge_pages=on",
                              "-c", "shared_buffers=" + shared_buffers, "-c", "max_connections=10",
                              "-c", "dynamic_shared_memory_type=posix"])
        with open(log, "w") as lf:
            os.chown(log, NOBODY, NOBODY)
            proc = subprocess.Popen(argv, stdout=lf, stderr=subprocess.STDOUT, cwd=top,
                                    start_new_session=True)
        pidfile = os.path.join(data, "postmaster.pid")
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                with open(log) as f:
                    raise RuntimeError("postgres did not start: " + f.read()[-800:])
            try:
                with open(pidfile) as f:
                    lines = f.read().split("\n")
                if len(lines) > 7 and lines[7].strip() == "ready":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not get ready in 60 s")
            time.sleep(0.1)
        yield proc.pid
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)          # immediate shutdown
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(top, ignore_errors=True)
