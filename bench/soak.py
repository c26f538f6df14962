#!/usr/bin/env python3
"""Soak: the long-running modes' memory under process churn, for minutes.

Runs `memtrack serve` (scraped every --interval), `memtrack record -i INTERVAL` and
`memtrack top -d INTERVAL` (plain frames into a pipe), each with --backend procfs and
--backend bpf: six commands at once, each its own process, beside one churn generator
(bench/churn.py's spawner: --rate processes a second, each pair sharing a memfd and a POSIX
shm file over SCM_RIGHTS, SIGKILLed after 20-200 ms). Every --sample seconds it reads each
command's /proc/PID/status (VmRSS, RssAnon, Threads) and its fd count; after the warm-up it
prints, per command, the RSS when the warm-up ended, at the end and its peak, the growth,
and the refreshes it made; "excess" is the growth less that of a fresh refresher's RSS
measured at the same two moments (a shared machine's process count moves under the run,
and what a refresher holds with it), and MiB/h the least-squares trend. Run as root (the bpf backend needs it; the churn's processes
must be seen).

    python3 bench/soak.py                          # 10 minutes, 150 processes/s
    python3 bench/soak.py --minutes 2 --modes record-bpf,top-bpf
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
MODES = [f"{m}-{b}" for m in ("serve", "record", "top") for b in ("procfs", "bpf")]


def _status(pid: int) -> dict:
    """VmRSS and RssAnon (kB), Threads, and open fds of a process; {} once it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "Threads"):
                    out[k] = int(v.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return {}
    return out if "VmRSS" in out else {}         # a zombie has no memory left to report


class Mode:
    """One long-running command and how to count its refreshes."""

    def __init__(self, name: str, interval: float, tmp: str):
        self.name = name
        kind, backend = name.split("-")
        self.kind = kind
        self.refreshes = 0
        self.error = None
        self.samples: list = []              # (seconds since start, status dict)
        base = [sys.executable, "-m", "memtrack", "--backend", backend, "-q"]
        env = dict(os.environ, PYTHONPATH=SRC)
        if kind == "serve":
            cmd = base + ["serve", "--listen", "127.0.0.1:0", "--min-interval", "0"]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True, env=env)
            line = self.proc.stderr.readline()
            m = re.search(r"http://\S+/metrics", line)
            if not m:
                self.error = f"serve did not start: {line.strip() or self.proc.stderr.read()[-300:]}"
                return
            self.url = m.group(0)
            threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
            threading.Thread(target=self._scrape, args=(interval,), daemon=True).start()
        elif kind == "record":
            self.db = os.path.join(tmp, f"{name}.db")
            cmd = base + ["record", "-o", self.db, "-i", str(interval)]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True, env=env)
            threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
        else:
            cmd = base + ["top", "-d", str(interval), "-n", str(10 ** 9)]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, env=dict(env, COLUMNS="132"))
            threading.Thread(target=self._frames, daemon=True).start()
            threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()

    def _drain(self, f):
        self.stderr_tail = ""
        for line in f:
            self.stderr_tail = (self.stderr_tail + line)[-2000:]

    def _frames(self):
        for line in self.proc.stdout:
            if line.startswith("memtrack top "):
                self.refreshes += 1

    def _scrape(self, interval: float):
        while self.proc.poll() is None:
            t = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=120) as r:
                    r.read()
                self.refreshes += 1
            except OSError:
                pass
            time.sleep(max(0.0, interval - (time.monotonic() - t)))

    def sample(self, at: float) -> None:
        st = _status(self.proc.pid)
        if st:
            self.samples.append((at, st))

    def finish(self) -> None:
        if self.kind == "record" and self.proc.poll() is None:
            import sqlite3
            try:
                con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
                try:
                    self.refreshes = con.execute("SELECT count(*) FROM snapshots").fetchone()[0]
                finally:
                    con.close()
            except sqlite3.Error as exc:
                self.error = f"cannot count snapshots: {exc}"
        if self.proc.poll() is not None and self.error is None:
            self.error = f"exited {self.proc.returncode}: {getattr(self, 'stderr_tail', '')[-300:]}"
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


FRESH = """
import sys
from memtrack.incremental import live_refresher
r = live_refresher(sys.argv[1])
for _ in range(int(sys.argv[2])):
    r.refresh()
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]))
"""


def fresh_rss(backend: str, refreshes: int = 3):
    """VmRSS (kB) of a new process that made a refresher and refreshed a few times: what
    the machine as it is now costs with nothing carried from before, or None if it failed.
    A long-running command's RSS less this one's, taken at the same moment, does not move
    with the machine's own process count (the other users of a shared machine)."""
    env = dict(os.environ, PYTHONPATH=SRC)
    try:
        out = subprocess.run([sys.executable, "-c", FRESH, backend, str(refreshes)], env=env,
                             capture_output=True, text=True, timeout=300)
        return int(out.stdout.split()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def _slope(points) -> float:
    """Least-squares slope of (x, y) points (0.0 for fewer than two)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def _machine_procs() -> int:
    return sum(1 for n in os.listdir("/proc") if n.isdigit())


def report(mode: Mode, warmup: float, refs: dict) -> dict:
    """The figures of one command: refs is {"start"|"end": {backend: fresh_rss}}."""
    after = [(t, s) for t, s in mode.samples if t >= warmup]
    out = {"mode": mode.name, "refreshes": mode.refreshes, "error": mode.error}
    if not after:
        return out
    first, last = after[0][1], after[-1][1]
    mib = 1024.0
    out.update(
        rss_start_mib=first["VmRSS"] / mib, rss_end_mib=last["VmRSS"] / mib,
        rss_peak_mib=max(s["VmRSS"] for _, s in after) / mib,
        rss_growth_mib=(last["VmRSS"] - first["VmRSS"]) / mib,
        anon_growth_mib=(last.get("RssAnon", 0) - first.get("RssAnon", 0)) / mib,
        # the trend, robust to where the last sample happened to fall in a scan
        rss_slope_mib_per_hour=_slope([(t, s["VmRSS"] / mib) for t, s in after]) * 3600,
        threads=(first["Threads"], last["Threads"]), fds=(first["fds"], last["fds"]))
    backend = mode.name.split("-")[1]
    r0, r1 = refs.get("start", {}).get(backend), refs.get("end", {}).get(backend)
    if r0 is not None and r1 is not None:
        # the growth less what a fresh refresher's RSS moved meanwhile (the machine's change)
        out["excess_growth_mib"] = ((last["VmRSS"] - r1) - (first["VmRSS"] - r0)) / mib
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    ap.add_argument("--warmup", type=float, default=60.0,
                    help="seconds before the baseline sample (default 60)")
    ap.add_argument("--rate", type=float, default=150.0, help="processes forked per second (default 150)")
    ap.add_argument("--interval", type=float, default=0.5,
                    help="seconds between one command's refreshes (default 0.5)")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated, of {','.join(MODES)} (default all)")
    ap.add_argument("--json", action="store_true", help="one JSON object per mode")
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        sys.exit(f"soak: unknown mode {bad[0]!r} (want {', '.join(MODES)})")
    if os.geteuid() != 0:
        sys.exit("soak: run as root (the bpf backend, and seeing every churn process)")
    duration = a.minutes * 60
    if duration <= a.warmup:
        sys.exit(f"soak: --minutes {a.minutes} is not longer than the {a.warmup:.0f} s warm-up")
    churn = subprocess.Popen([sys.executable, os.path.join(HERE, "churn.py"), "--spawner",
                              "--rate", str(a.rate)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, preexec_fn=lambda: os.nice(-5))
    # (ahead of the rest: on a busy machine the spawner fell to 30-50 processes/s)
    running = []
    backends = sorted({m.split("-")[1] for m in modes})
    refs: dict = {}
    procs: dict = {}

    def reference(when: str) -> None:
        procs[when] = _machine_procs()
        refs[when] = {b: fresh_rss(b) for b in backends}

    with tempfile.TemporaryDirectory(prefix="memtrack-soak-") as tmp:
        try:
            t0 = time.monotonic()
            for name in modes:
                running.append(Mode(name, a.interval, tmp))
            while True:
                at = time.monotonic() - t0
                for m in running:
                    m.sample(at)
                if at >= a.warmup and "start" not in refs:
                    reference("start")
                if at >= duration:
                    reference("end")
                    break
                time.sleep(max(0.0, min(a.sample, duration - (time.monotonic() - t0))))
        finally:
            for m in running:
                m.finish()
            churn.stdin.close()
            spawned = churn.stdout.read().strip()
            churn.wait()
    try:
        got = json.loads(spawned)
        rate = f"{got['spawned'] / got['seconds']:.0f} processes/s ({got['spawned']} in {got['seconds']:.0f} s)"
    except (ValueError, KeyError, ZeroDivisionError):
        rate = "unknown rate"
    rows = [report(m, a.warmup, refs) for m in running]
    if a.json:
        for r in rows:
            print(json.dumps(r))
        return 1 if any(r["error"] for r in rows) else 0
    print(f"memtrack soak: {a.minutes:g} min, churn {rate}, refresh every {a.interval:g} s, "
          f"growth measured after a {a.warmup:.0f} s warm-up")
    mib = lambda kb: "-" if kb is None else f"{kb / 1024:.1f}"
    for when in ("start", "end"):
        if when in refs:
            print(f"  {when:5}: {procs[when]} processes on the machine; a fresh refresher's RSS MiB: "
                  + ", ".join(f"{b} {mib(refs[when][b])}" for b in backends))
    print(f"{'mode':14} {'refreshes':>9} {'RSS MiB':>8} {'end':>7} {'peak':>7} {'growth':>7} "
          f"{'excess':>7} {'MiB/h':>7} {'threads':>8} {'fds':>9}")
    for r in rows:
        if "rss_start_mib" not in r:
            print(f"{r['mode']:14} {r['refreshes']:>9} no samples after the warm-up  {r['error'] or ''}")
            continue
        print(f"{r['mode']:14} {r['refreshes']:>9} {r['rss_start_mib']:8.1f} {r['rss_end_mib']:7.1f} "
              f"{r['rss_peak_mib']:7.1f} {r['rss_growth_mib']:+7.1f} "
              f"{'%+7.1f' % r['excess_growth_mib'] if 'excess_growth_mib' in r else '      -'} "
              f"{r['rss_slope_mib_per_hour']:+7.1f} {'%d->%d' % r['threads']:>8} {'%d->%d' % r['fds']:>9}"
              + (f"  ERROR {r['error']}" if r["error"] else ""))
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
