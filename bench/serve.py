"""Benchmark `memtrack serve`: scrape latency and scans per second under concurrent load.

    python3 bench/serve.py [--clients 8] [--seconds 10] [--min-interval 1] [--per-pid]

Starts `memtrack serve` on a free localhost port (this machine, live), lets N client threads
scrape /metrics back to back for S seconds, and prints latency percentiles, scrapes per
second, and scans per second (from memtrack_scans_total), which --min-interval bounds
however many clients scrape. Keep N small on a shared machine."""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")


def scans(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        m = re.search(rb"^memtrack_scans_total (\S+)$", r.read(), re.M)
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--min-interval", type=float, default=1.0)
    ap.add_argument("--per-pid", action="store_true")
    a = ap.parse_args()
    cmd = [sys.executable, "-m", "memtrack", "serve", "--listen", "127.0.0.1:0", "--min-interval", str(a.min_interval)]
    if a.per_pid:
        cmd.append("--per-pid")
    srv = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=SRC))
    try:
        m = re.search(r"http://\S+/metrics", srv.stderr.readline())
        if not m:
            sys.exit("memtrack serve did not start")
        url = m.group(0)
        t0 = time.monotonic()
        s0 = scans(url)
        first = time.monotonic() - t0
        lat, errors = [], []
        lock = threading.Lock()
        stop = time.monotonic() + a.seconds

        def client():
            mine = []
            while time.monotonic() < stop:
                t = time.monotonic()
                try:
                    with urllib.request.urlopen(url, timeout=60) as r:
                        r.read()
                except OSError as exc:
                    errors.append(exc)
                    continue
                mine.append(time.monotonic() - t)
            with lock:
                lat.extend(mine)

        start = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(a.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        s1 = scans(url)
    finally:
        srv.terminate()
        srv.wait()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
    print(f"memtrack serve: {a.clients} clients for {elapsed:.1f} s, --min-interval {a.min_interval}"
          f"{' --per-pid' if a.per_pid else ''}")
    print(f"  first scrape (includes the first scan): {first * 1000:.1f} ms")
    print(f"  scrapes: {len(lat)} ({len(lat) / elapsed:.1f}/s), errors: {len(errors)}")
    if lat:
        print(f"  latency ms: p50 {q(0.50):.2f}  p90 {q(0.90):.2f}  p99 {q(0.99):.2f}  max {lat[-1] * 1000:.2f}"
              f"  mean {statistics.fmean(lat) * 1000:.2f}")
    print(f"  scans: {s1 - s0:.0f} during the run ({(s1 - s0) / elapsed:.2f}/s; "
          f"bound by --min-interval: <= {1 / a.min_interval if a.min_interval else float('inf'):.2f}/s)")


if __name__ == "__main__":
    main()
