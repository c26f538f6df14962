"""Benchmark `memtrack serve` under hostile clients: scrape latency with and without an attack.

    python3 bench/serve_hostile.py [--seconds 20] [--idle 1000] [--slow 50] [--nofile 1024]
                                   [--min-interval 10] [--src DIR]

Starts `memtrack serve` on a free 127.0.0.1 port under RLIMIT_NOFILE --nofile (live, this
machine), then, for --seconds each: (1) a scraper alone, one GET /metrics every 0.1 s on a new
connection; (2) the same scraper while --idle connections stay open sending nothing and --slow
slowloris clients send one header byte each every 0.5 s; both kinds are reopened as soon as the
server closes them, so the attack lasts the whole phase. Prints scrape latency percentiles,
failed scrapes (5 s timeout), the server's CPU% (of one CPU), its most threads and fds, and how
many attacking connections it closed. --src runs another source tree (e.g. an old checkout)."""
from __future__ import annotations

import argparse
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
TICK = os.sysconf("SC_CLK_TCK")


def proc_stats(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/status") as f:
        threads = int(re.search(r"^Threads:\s+(\d+)", f.read(), re.M).group(1))
    return (int(fields[11]) + int(fields[12])) / TICK, threads, len(os.listdir(f"/proc/{pid}/fd"))


def closed_by_peer(s):
    try:
        return s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Attack:
    """n_idle connections that send nothing and n_slow that send a header byte every 0.5 s,
    each reopened once the server has closed it."""

    def __init__(self, port, n_idle, n_slow):
        self.port, self.closed = port, 0
        self.idle = []
        for i in range(n_idle):            # paced: a burst past the listen backlog would become
            self.idle.append(self._idle())   # syncookie half-open connections the server never sees
            if i % 50 == 49:
                time.sleep(0.02)
        self.slow = [self._slow() for _ in range(n_slow)]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _idle(self):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", self.port))
        return s

    def _slow(self):
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", self.port))
            s.send(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        except OSError:
            pass
        s.setblocking(False)
        return s

    def _run(self):
        while not self.stop.wait(0.5):
            for i, s in enumerate(self.idle):
                if closed_by_peer(s):
                    s.close()
                    self.closed += 1
                    self.idle[i] = self._idle()
            for i, s in enumerate(self.slow):
                try:
                    s.send(b"x")
                except OSError:
                    s.close()
                    self.closed += 1
                    self.slow[i] = self._slow()

    def close(self):
        self.stop.set()
        self.thread.join()
        for s in self.idle + self.slow:
            s.close()


def phase(url, pid, seconds):
    lat, errors, most_threads, most_fds = [], 0, 0, 0
    cpu0 = proc_stats(pid)[0]
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        t = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                ok = r.status == 200 and b"\nmemtrack_up " in r.read()
        except OSError:
            ok = False
        if ok:
            lat.append(time.monotonic() - t)
        else:
            errors += 1
        _, threads, fds = proc_stats(pid)
        most_threads, most_fds = max(most_threads, threads), max(most_fds, fds)
        time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))
    wall = time.monotonic() - t0
    cpu = proc_stats(pid)[0] - cpu0
    return lat, errors, cpu / wall * 100, most_threads, most_fds


def report(name, lat, errors, cpu, threads, fds):
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
    print(f"  {name}: {len(lat)} scrapes, {errors} failed; latency ms p50 {q(0.5):.1f} p90 {q(0.9):.1f} "
          f"p99 {q(0.99):.1f} max {q(1.0):.1f}; server CPU {cpu:.0f}%, threads <= {threads}, fds <= {fds}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--slow", type=int, default=50)
    ap.add_argument("--nofile", type=int, default=1024)
    ap.add_argument("--min-interval", type=float, default=10.0)
    ap.add_argument("--src", default=SRC)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.idle + a.slow + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard) if hard >= 0 else need, hard))

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (a.nofile, a.nofile))

    cmd = [sys.executable, "-m", "memtrack", "serve", "--listen", "127.0.0.1:0", "--min-interval", str(a.min_interval)]
    srv = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=limit,
                           env=dict(os.environ, PYTHONPATH=os.path.abspath(a.src)))
    attack = None
    try:
        m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", srv.stderr.readline())
        if not m:
            sys.exit("memtrack serve did not start")
        url, port = m.group(0), int(m.group(1))
        print(f"memtrack serve ({a.src}), RLIMIT_NOFILE {a.nofile}, --min-interval {a.min_interval}, "
              f"one scrape per 0.1 s, {a.seconds:.0f} s per phase")
        report("no attack", *phase(url, srv.pid, a.seconds))
        attack = Attack(port, a.idle, a.slow)
        res = phase(url, srv.pid, a.seconds)
        report(f"{a.idle} idle + {a.slow} slowloris", *res)
        print(f"  attacking connections the server closed (each reopened): {attack.closed}")
    finally:
        if attack:
            attack.close()
        srv.terminate()
        try:
            srv.wait(timeout=20)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


if __name__ == "__main__":
    main()
