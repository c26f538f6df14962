#!/usr/bin/env python3
"""Churn: memtrack scanning a machine where processes come and go at ~100 per second.

A spawner forks pairs of short-lived processes: the first creates a memfd and a POSIX shm
file (unlinked at once), maps the memfd, and passes both fds over SCM_RIGHTS to the second,
which maps them and closes its fds; the spawner SIGKILLs each after 20-200 ms (some are
zombies for a moment before they are reaped). Two long-lived processes (a parent and its
fork child) share a memfd and a shm file for the whole run.

Meanwhile this process scans the whole machine in a loop and checks every snapshot:
  - no exception (a crash);
  - the pss invariant (sum of pss == sum of sizes of held buffers, to the byte);
  - every holder of a buffer has a reference to it, every reference's pid is a holder;
    holders sorted and unique; fd_refs and map_refs match the references;
  - no pid both in the processes and in the skipped lists;
  - the long-lived processes present and accounted exactly;
  - every 10th snapshot survives JSON -> Snapshot unchanged.

  python3 bench/churn.py                     # 60 s at 100 processes/s (run as root)
  python3 bench/churn.py -d 8 --json         # short; one JSON line (the CI test)
"""
from __future__ import annotations

import argparse
import array
import ctypes
import ctypes.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
PAGE = 4096
LONG_POOL, LONG_SHM = 6 * PAGE, 10 * PAGE


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    return libc


def _map(libc, fd, n):
    addr = libc.mmap(None, n, 0x1 | 0x2, 0x01, fd, 0)       # PROT_READ|WRITE, MAP_SHARED
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    return addr


# -- the long-lived holders --------------------------------------------------------------

def holder():
    pool = os.memfd_create("churn long pool", 0)
    os.ftruncate(pool, LONG_POOL)
    path = f"/dev/shm/memtrack-churn-long-{os.getpid()}"
    shm = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    os.ftruncate(shm, LONG_SHM)
    libc = _libc()
    _map(libc, pool, LONG_POOL)
    child = os.fork()
    if child == 0:
        try:
            sys.stdin.buffer.read()
        finally:
            os._exit(0)
    print(json.dumps({"pids": [os.getpid(), child]}), flush=True)
    try:
        sys.stdin.buffer.read()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


# -- the spawner -------------------------------------------------------------------------

def _first(libc, sock, size):
    fd = os.memfd_create("churn", 0)
    os.ftruncate(fd, size)
    _map(libc, fd, size)
    path = f"/dev/shm/memtrack-churn-{os.getpid()}"
    shm = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    os.ftruncate(shm, PAGE)
    sock.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd, shm]))])
    os.close(fd)                      # keeps the mapping only, and the shm fd


def _second(libc, sock, size):
    _msg, anc, _f, _a = sock.recvmsg(1, socket.CMSG_SPACE(8))
    fds = array.array("i")
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if fds:
        _map(libc, fds[0], size)
        if len(fds) > 1:
            _map(libc, fds[1], PAGE)
        for fd in fds:
            os.close(fd)              # map-only references from here on


def spawner(rate: float, seed: int):
    """Fork `rate` processes per second (in pairs) until stdin closes; kill each after
    20-200 ms. Prints {"spawned": N, "killed": N, "seconds": S} at the end."""
    libc = _libc()
    rng = random.Random(seed)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    os.set_blocking(0, False)
    live = []                          # (deadline, pid)
    spawned = killed = 0
    t0 = time.monotonic()
    next_at = t0
    while not stop:
        try:
            if os.read(0, 1) == b"":
                break
        except BlockingIOError:
            pass
        now = time.monotonic()
        while next_at <= now:
            next_at += 2.0 / rate
            size = PAGE * rng.randint(1, 16)
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            for role in (_first, _second):
                pid = os.fork()
                if pid == 0:
                    try:
                        role(libc, a if role is _first else b, size)
                        time.sleep(10)
                    finally:
                        os._exit(0)
                live.append((now + rng.uniform(0.02, 0.2), pid))
                spawned += 1
            a.close()
            b.close()
        keep = []
        for deadline, pid in live:
            if deadline <= now:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            else:
                keep.append((deadline, pid))
        live = keep
        while True:                    # reap; a killed child stays a zombie until here
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        time.sleep(0.002)
    for _, pid in live:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    print(json.dumps({"spawned": spawned, "killed": killed, "seconds": time.monotonic() - t0}), flush=True)


# -- the checks --------------------------------------------------------------------------

def check(snap, long_pids, acct):
    """Problems found in one snapshot (an empty list: consistent)."""
    bad = []
    if acct.total.pss != acct.held_bytes:
        bad.append(f"pss invariant: {acct.total.pss} != {acct.held_bytes}")
    pm = snap.process_map
    refs_of = {}
    for p in snap.processes:
        seen = set()
        for r in p.refs:
            if r.buffer in seen:
                bad.append(f"pid {p.pid}: buffer {r.buffer} referenced twice")
            seen.add(r.buffer)
            refs_of.setdefault(r.buffer, []).append((p.pid, r))
    for b in snap.buffers:
        if list(b.holders) != sorted(set(b.holders)):
            bad.append(f"{b.id}: holders not sorted/unique")
        got = sorted(pid for pid, _ in refs_of.get(b.id, ()))
        if got != list(b.holders):
            bad.append(f"{b.id}: holders {b.holders} but references from {got}")
        rs = [r for _, r in refs_of.get(b.id, ())]
        if sum(len(r.fds) for r in rs) != b.fd_refs or sum(len(r.vmas) for r in rs) != b.map_refs:
            bad.append(f"{b.id}: fd_refs/map_refs do not match the references")
        if not b.holders and b.kind in ("memfd", "shm", "shmem"):
            bad.append(f"{b.id}: a {b.kind} buffer without holders")
    sk = set(snap.skipped.denied) | set(snap.skipped.vanished) | set(snap.skipped.unreadable)
    if sk & set(pm):
        bad.append(f"pids both read and skipped: {sorted(sk & set(pm))[:5]}")
    want = {"rss": LONG_POOL + LONG_SHM, "pss": LONG_POOL // 2 + LONG_SHM // 2, "uss": 0}
    for pid in long_pids:
        if pid not in pm:
            bad.append(f"long-lived pid {pid} missing")
            continue
        u = acct.processes[pid].total
        got = {"rss": u.rss, "pss": u.pss, "uss": u.uss}
        if got != want:
            bad.append(f"long-lived pid {pid}: {got} != {want}")
    return bad


def run(duration: float, rate: float, seed: int):
    sys.path.insert(0, SRC)
    import memtrack
    from memtrack.account import account
    from memtrack.json_in import from_dict
    from memtrack.json_out import to_json
    py = sys.executable
    hold = subprocess.Popen([py, __file__, "--holder"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    long_pids = json.loads(hold.stdout.readline())["pids"]
    spawn = subprocess.Popen([py, __file__, "--spawner", "--rate", str(rate), "--seed", str(seed)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    scans = crashes = inconsistent = round_trips = 0
    vanished = denied = 0
    max_procs = 0
    problems = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < duration:
            try:
                snap = memtrack.scan()
                acct = account(snap)
                if scans % 10 == 0:
                    again = from_dict(json.loads(to_json(snap)))
                    if again != snap:
                        raise AssertionError("JSON round trip changed the snapshot")
                    round_trips += 1
            except Exception as exc:          # a crash: counted, reported, the run goes on
                crashes += 1
                problems.append(f"crash: {type(exc).__name__}: {exc}")
                continue
            scans += 1
            vanished += len(snap.skipped.vanished)
            denied += len(snap.skipped.denied)
            max_procs = max(max_procs, len(snap.processes))
            bad = check(snap, long_pids, acct)
            if bad:
                inconsistent += 1
                problems.extend(bad[:3])
    finally:
        elapsed = time.monotonic() - t0
        spawn.stdin.close()
        stats = json.loads(spawn.stdout.readline() or "{}")
        spawn.wait()
        hold.stdin.close()
        hold.wait()
    return {
        "seconds": round(elapsed, 1), "scans": scans, "crashes": crashes,
        "inconsistent_snapshots": inconsistent, "json_round_trips": round_trips,
        "vanished_during_scans": vanished, "denied": denied, "max_processes_with_buffers": max_procs,
        "spawned": stats.get("spawned", 0), "killed": stats.get("killed", 0),
        "spawn_rate_per_s": round(stats.get("spawned", 0) / max(stats.get("seconds", elapsed), 1e-9), 1),
        "long_lived": long_pids, "problems": problems[:20],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-d", "--duration", type=float, default=60.0, help="seconds of scanning (default 60)")
    ap.add_argument("--rate", type=float, default=100.0, help="processes spawned per second (default 100)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="one JSON line")
    ap.add_argument("--holder", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--spawner", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.holder:
        return holder()
    if a.spawner:
        return spawner(a.rate, a.seed)
    res = run(a.duration, a.rate, a.seed)
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:28} {v}")
    return 0 if res["crashes"] == 0 and res["inconsistent_snapshots"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
