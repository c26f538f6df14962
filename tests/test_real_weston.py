"""weston, the real Wayland compositor, headless, with a real wl_shm client (weston-simple-shm,
from the weston package), against what /proc says (issue 14, "Done means"): the client's
memfd pool is held by both the client and the compositor, which maps the fd it was sent.
The expected figures come from /proc (helpers/procfacts.py), compared with a live scan,
procfs and bpf backends.

One compositor and one client for the module, as the nobody user, with a private
XDG_RUNTIME_DIR. Skipped where weston is not installed."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import pytest

from helpers import procfacts
from helpers.nobody import NOBODY
from memtrack.account import account

WESTON, CLIENT = shutil.which("weston"), shutil.which("weston-simple-shm")
SOCKET = "wl-memtrack"

pytestmark = [pytest.mark.skipif(not (WESTON and CLIENT), reason="weston (and weston-simple-shm) not installed"),
              pytest.mark.requires_root(reason="weston runs as nobody; map_files needs root")]


def memfds(pid):
    """The memfd inodes a process maps shared."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return {int(line.split()[4]) for line in f
                    if "/memfd:" in line and line.split()[1][3] == "s"}
    except OSError:
        return set()


def start(cmd, env, d, log):
    return subprocess.Popen(NOBODY + cmd, env=env, cwd=d, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, log), "w"))


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def weston():
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv")
    top = tempfile.mkdtemp(prefix="memtrack-weston-")
    os.chmod(top, 0o755)
    d = os.path.join(top, "run")                  # XDG_RUNTIME_DIR: the user's own, 0700
    os.mkdir(d, 0o700)
    os.chown(d, 65534, 65534)
    env = {"PATH": "/usr/bin:/bin", "HOME": d, "XDG_RUNTIME_DIR": d, "WAYLAND_DISPLAY": SOCKET}
    comp = client = None
    try:
        comp = start([WESTON, "--backend=headless-backend.so", f"--socket={SOCKET}",
                      "--shell=kiosk-shell.so", "--idle-time=0", "--no-config"], env, d, "weston.log")
        end = time.monotonic() + 20
        while not os.path.exists(os.path.join(d, SOCKET)):
            if comp.poll() is not None or time.monotonic() > end:
                with open(os.path.join(d, "weston.log")) as f:
                    pytest.skip("weston did not start: " + f.read()[-300:])
            time.sleep(0.05)
        client = start([CLIENT], env, d, "client.log")
        end = time.monotonic() + 20
        while not (memfds(comp.pid) & memfds(client.pid)):
            assert client.poll() is None and comp.poll() is None, "weston or its client exited"
            assert time.monotonic() < end, "the compositor never mapped the client's pool"
            time.sleep(0.05)
        yield {"weston": comp.pid, "client": client.pid}
    finally:
        for p in (client, comp):
            if p is not None:
                stop(p)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def compared(weston):
    return procfacts.compare({weston["weston"], weston["client"]})


def test_wl_shm_pool_held_by_client_and_compositor(compared, weston):
    both = {weston["weston"], weston["client"]}
    for backend, expected, seen, snap in compared:
        pools = [(k, f) for k, f in expected.items() if k[0] == "memfd" and f.holders == both]
        assert pools, "no memfd held by both"
        for key, fact in pools:
            assert seen[key] == fact, backend
        assert seen == expected, backend          # and every other buffer either holds
        acct = account(snap)
        for pid in both:
            assert acct.process(pid).total.rss == procfacts.rss(expected, pid), (backend, pid)
