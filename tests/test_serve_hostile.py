"""`memtrack serve` under hostile clients (issue 15.4), as a real server under the usual 1,024
open files: a thousand idle connections and fifty slowloris clients neither stop a scrape nor
run it out of fds or threads, accept() out of fds does not spin, and --listen takes ASCII
ports and binds every interface only when told. Every wait here is a failure bound, never a
measured time (bench/serve_hostile.py measures)."""
from __future__ import annotations

import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytest.importorskip("prometheus_client")

from remote_util import SRC  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=SRC)
TICK = os.sysconf("SC_CLK_TCK")


def _nofile(n):
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return limit


class Serve:
    """memtrack serve on a free loopback port, under RLIMIT_NOFILE `nofile`."""

    def __init__(self, *args, nofile=1024):
        self.proc = subprocess.Popen([sys.executable, "-m", "memtrack", "serve", "--listen", "127.0.0.1:0",
                                      "--min-interval", "3600"] + list(args), stderr=subprocess.PIPE,
                                     text=True, env=ENV, preexec_fn=_nofile(nofile))
        line = self.proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        if not m:
            self.close()
            raise AssertionError(f"serve did not start: {line!r}")
        self.port = int(m.group(1))

    def scrape(self) -> str:
        # 10 s is a failure bound (the server hung), not a timing
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            assert r.status == 200
            return r.read().decode()

    def threads(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"^Threads:\s+(\d+)", f.read(), re.M).group(1))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def close(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err or ""


@pytest.fixture
def many_fds():
    """This test process holds over a thousand sockets: its own limit raised for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if want < 1500:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}: cannot hold 1,000 connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connect_idle(port, n, first=b""):
    """n connections to 127.0.0.1:port, each having sent `first` and nothing more; waits
    (bounded) until each is established, refused or closed."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_WRITE)
        pending, end = len(socks), time.monotonic() + 30
        while pending and time.monotonic() < end:
            for key, _ in sel.select(timeout=1):
                sel.unregister(key.fileobj)
                pending -= 1
                if first:
                    try:
                        key.fileobj.send(first)
                    except OSError:
                        pass
    return socks


def is_closed_by_peer(s) -> bool:
    try:
        return s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_a_thousand_idle_and_fifty_slowloris_clients_never_stop_a_scrape(many_fds):
    srv = Serve()
    idle, slow = [], []
    stop = threading.Event()
    dribbled = [0]

    def dribble():
        # slowloris: one byte of an endless header every half second, on every connection
        for _ in range(200):
            if stop.wait(0.5):
                return
            for s in slow:
                try:
                    s.send(b"x")
                    dribbled[0] += 1
                except OSError:
                    pass

    t = threading.Thread(target=dribble)
    try:
        for _ in range(4):
            idle += connect_idle(srv.port, 250)
        slow = connect_idle(srv.port, 50, first=b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        t.start()
        opened = time.monotonic()
        seen_threads, seen_fds, texts = [], [], []
        cpu0 = srv.cpu_seconds()
        for _ in range(5):
            seen_threads.append(srv.threads())
            seen_fds.append(srv.fds())
            texts.append(srv.scrape())
            time.sleep(0.5)
        cpu = srv.cpu_seconds() - cpu0
        # the slowloris clients keep sending, yet are closed once their head is overdue (10 s
        # after the server took them: a connection may wait in the backlog before that)
        end = time.monotonic() + 60
        while time.monotonic() < end and not all(is_closed_by_peer(s) for s in slow + idle):
            time.sleep(0.5)
        slow_closed = sum(is_closed_by_peer(s) for s in slow)
        idle_closed = sum(is_closed_by_peer(s) for s in idle)
        waited = time.monotonic() - opened
        after = srv.scrape()
    finally:
        stop.set()
        if t.ident:
            t.join(timeout=30)
        for s in idle + slow:
            s.close()
        srv.close()
    for text in texts + [after]:
        assert re.search(r"^memtrack_up 1\.0$", text, re.M), text[:500]
    # one loop thread and four renderers (a bpf scan may add one): not one per connection
    assert max(seen_threads) <= 8, seen_threads
    # at most 512 connections (half of RLIMIT_NOFILE), the rest for scans: never every fd
    assert max(seen_fds) <= 512 + 64, seen_fds
    assert dribbled[0] > 0
    assert slow_closed == 50, (slow_closed, waited)
    assert idle_closed == 1000, (idle_closed, waited)
    # a server spinning on accept() would have used a CPU for these seconds
    assert cpu < 2.0, cpu


def test_out_of_fds_accept_neither_spins_nor_locks_out_a_scraper(many_fds):
    """RLIMIT_NOFILE 16: the server's own fds (about 9) and its 8 connections do not fit, so
    accept() fails with EMFILE while clients queue. An idle connection gives its fd to the new
    one; nothing spins."""
    srv = Serve("--backend", "procfs", nofile=16)
    idle = []
    try:
        idle = connect_idle(srv.port, 100)
        texts, fds = [], []
        cpu0 = srv.cpu_seconds()
        for _ in range(3):
            texts.append(srv.scrape())
            fds.append(srv.fds())
            time.sleep(1)
        cpu = srv.cpu_seconds() - cpu0
    finally:
        for s in idle:
            s.close()
        err = srv.close()
    for text in texts:
        assert re.search(r"^memtrack_up 1\.0$", text, re.M), text[:500]
    assert max(fds) <= 16
    assert cpu < 1.5, cpu
    assert "Traceback" not in err, err


def test_listen_port_alone_is_loopback():
    p = subprocess.Popen([sys.executable, "-m", "memtrack", "serve", "--listen", "0", "--min-interval", "3600"],
                         stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = p.stderr.readline()
    finally:
        p.terminate()
        p.communicate(timeout=20)
    assert re.fullmatch(r"memtrack: serving http://127\.0\.0\.1:\d+/metrics\n", line), line


def test_http_edges(many_fds):
    """Keep-alive and pipelining, HEAD, a bad request line, an over-long head: each answered
    as HTTP says, the connection closed where it must be."""
    srv = Serve()

    def talk(data):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(data)
            out = b""
            while True:
                b = s.recv(65536)
                if not b:
                    return out
                out += b

    try:
        two = talk(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nHEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        bad = talk(b"GARBAGE\r\n\r\n")
        v2 = talk(b"GET /metrics HTTP/2.0\r\n\r\n")
        big = talk(b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: yyyyyyyy\r\n" * 1000)
        post = talk(b"POST /metrics HTTP/1.0\r\n\r\n")
        old = talk(b"GET /metrics HTTP/1.0\r\n\r\n")
    finally:
        srv.close()
    first, _, rest = two.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", first).group(1))
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: keep-alive" in first
    head2, _, tail = rest[length:].partition(b"\r\n\r\n")
    assert head2.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in head2
    assert int(re.search(rb"Content-Length: (\d+)", head2).group(1)) == length and tail == b""
    assert bad.startswith(b"HTTP/1.1 400 ")
    assert v2.startswith(b"HTTP/1.1 505 ")
    assert big.startswith(b"HTTP/1.1 431 ")
    assert post.startswith(b"HTTP/1.1 405 ")
    assert old.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in old and b"memtrack_up 1.0" in old
