#!/usr/bin/env python3
"""Hostile captures: peak RSS and time of `memtrack --root ARCHIVE` on archives built to
hurt (issue 15, point 3). Each archive is generated into a temporary directory, then
memtrack runs on it as a child process; its peak RSS comes from the child's own rusage
(os.wait4), so nothing of this script is counted.

  python3 bench/hostile.py                         # every case, full size (minutes, ~3 GB of /tmp)
  python3 bench/hostile.py -c repeat15 -c gzbomb   # some cases
  python3 bench/hostile.py --scale 0.1             # everything ten times smaller
  PYTHONPATH=/work/main/src python3 bench/hostile.py --src /work/main/src   # another tree's code
  python3 bench/hostile.py --as-limit 2048         # under a 2 GiB address-space limit

Cases (sizes at --scale 1):
  repeat15    15 processes, each a 63 MiB maps repeating one shared-memfd line (the issue's
              3.4 MB archive: within every documented cap)
  distinct    15 processes, each a 63 MiB maps of distinct shared-memfd mappings (one
              buffer per line: more than the memory cap can hold, must be refused)
  gzbomb      one member declaring 8 GiB of zeros (skipped as too large, but decompressed)
  gzbomb60    40 members of 60 MiB of zeros, each under the member cap (a kept-bytes bomb)
  fdinfo      one 63 MiB fdinfo of a dma-buf fd
  smaps       --smaps on 15 processes whose 63 MiB smaps repeat one shared block
  members     200,000 processes of one memfd fd each (about a million small members)
  deep        100,000 members with 4,000-byte names, 31 levels deep
"""
from __future__ import annotations

import argparse
import gzip
import io
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

MEMFD = b"7f0000000000-7f0000001000 rw-s 00000000 00:01 4242 /memfd:pool (deleted)\n"


class _Repeat(io.RawIOBase):
    """`size` bytes of `unit` repeated, read without ever being whole in memory."""

    def __init__(self, unit: bytes, size: int):
        self.block = unit * max(1, (1 << 20) // len(unit))
        self.left = size
        self.pos = 0

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.left)
        out = 0
        while out < n:
            chunk = self.block[self.pos:self.pos + n - out]
            b[out:out + len(chunk)] = chunk
            out += len(chunk)
            self.pos = (self.pos + len(chunk)) % len(self.block)
        self.left -= n
        return n


class _Distinct(io.RawIOBase):
    """`size` bytes of maps lines, each a different memfd (inode) at its own address."""

    def __init__(self, size: int):
        self.left, self.i, self.buf = size, 0, b""

    def readable(self):
        return True

    def readinto(self, b):
        while len(self.buf) < len(b) and self.left > len(self.buf):
            lines = []
            for _ in range(10000):
                a = 0x100000000 + self.i * 0x1000
                lines.append(b"%x-%x rw-s 00000000 00:01 %d /memfd:m%d (deleted)\n"
                             % (a, a + 0x1000, 100000 + self.i, self.i))
                self.i += 1
            self.buf += b"".join(lines)
        n = min(len(b), self.left, len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        self.left -= n
        return n


class Writer:
    def __init__(self, path: str, level: int = 6):
        self.tf = tarfile.open(path, "w:gz", compresslevel=level, format=tarfile.PAX_FORMAT)
        self.dirs = set()

    def _dirs(self, name):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                ti = tarfile.TarInfo(d)
                ti.type = tarfile.DIRTYPE
                self.tf.addfile(ti)

    def file(self, name, data=b"", size=None, stream=None):
        self._dirs(name)
        ti = tarfile.TarInfo(name)
        ti.size = len(data) if size is None else size
        self.tf.addfile(ti, stream if stream is not None else io.BytesIO(data))

    def link(self, name, target):
        self._dirs(name)
        ti = tarfile.TarInfo(name)
        ti.type, ti.linkname = tarfile.SYMTYPE, target
        self.tf.addfile(ti)

    def proc(self, pid, comm=b"app", maps=True):
        if maps:
            self.file(f"proc/{pid}/maps", b"")
        self.file(f"proc/{pid}/comm", comm + b"\n")
        self.file(f"proc/{pid}/cmdline", comm + b"\0")
        self.file(f"proc/{pid}/status", b"Name:\t%s\nUid:\t0\t0\t0\t0\n" % comm)

    def close(self):
        self.tf.close()


def mib(x, scale):
    """x MiB times the scale, in bytes (at least a page)."""
    return max(4096, int(x * scale * (1 << 20)))


def gen_repeat15(path, scale):
    w = Writer(path)
    size = mib(63, scale)
    size -= size % len(MEMFD)
    for pid in range(100, 115):
        w.proc(pid, maps=False)
        w.link(f"proc/{pid}/fd/3", "/memfd:pool (deleted)")
        w.file(f"proc/{pid}/fdstat", b"3 00:01 4242 4096 100777\n")
        w.file(f"proc/{pid}/maps", size=size, stream=_Repeat(MEMFD, size))
    w.close()


def gen_distinct(path, scale):
    w = Writer(path)
    size = mib(63, scale)
    for pid in range(100, 115):
        w.proc(pid, maps=False)
        w.file(f"proc/{pid}/maps", size=size, stream=_Distinct(size))
    w.close()


def gen_gzbomb(path, scale):
    """A tar of one member declaring 8 GiB of zeros, and holding them: a gzip file may be
    gzip members one after the other, so 64 MiB of zeros is compressed once (level 9: the
    ~1000:1 deflate allows) and repeated; making it takes a second."""
    size = mib(8192, scale) >> 20 << 20 or 1 << 20
    step = min(size, 64 << 20)
    size -= size % step
    d = tarfile.TarInfo("proc")
    d.type = tarfile.DIRTYPE
    hdr = tarfile.TarInfo("proc/1/maps")
    hdr.size = size
    block = gzip.compress(bytes(step), 9)
    with open(path, "wb") as f:
        f.write(gzip.compress(d.tobuf(tarfile.PAX_FORMAT) + hdr.tobuf(tarfile.PAX_FORMAT)))
        for _ in range(size // step):
            f.write(block)
        f.write(gzip.compress(bytes(1024)))          # the end-of-archive blocks


def gen_gzbomb60(path, scale):
    w = Writer(path, level=9)
    size = mib(60, scale)
    for i in range(40):
        w.proc(100 + i)
        w.file(f"proc/{100 + i}/stack", size=size, stream=_Repeat(b"\0", size))
    w.close()


def gen_fdinfo(path, scale):
    w = Writer(path)
    w.proc(100)
    w.link("proc/100/fd/3", "/dmabuf:")
    size = mib(63, scale)
    unit = b"size:\t4096\nexp_name:\tsystem\ncount:\t1\nino:\t77\nflags:\t02\n"
    size -= size % len(unit)
    w.file("proc/100/fdinfo/3", size=size, stream=_Repeat(unit, size))
    w.close()


def gen_smaps(path, scale):
    w = Writer(path)
    size = mib(63, scale)
    block = (MEMFD + b"Size:               4 kB\nRss:                4 kB\nPss:                4 kB\n"
             b"Shared_Clean:          0 kB\nVmFlags: rd wr sh mr mw me ms sd\n")
    size -= size % len(block)
    for pid in range(100, 115):
        w.proc(pid, maps=False)
        w.link(f"proc/{pid}/fd/3", "/memfd:pool (deleted)")
        w.file(f"proc/{pid}/fdstat", b"3 00:01 4242 4096 100777\n")
        w.file(f"proc/{pid}/maps", MEMFD)
        w.file(f"proc/{pid}/smaps", size=size, stream=_Repeat(block, size))
    w.close()


def gen_members(path, scale):
    w = Writer(path, level=1)
    n = max(10, int(200_000 * scale))
    for pid in range(1, n + 1):
        w.proc(pid)
        w.link(f"proc/{pid}/fd/3", f"/memfd:m{pid} (deleted)")
        w.file(f"proc/{pid}/fdstat", b"3 00:01 %d 4096 100777\n" % (1000 + pid))
    w.close()


def gen_deep(path, scale):
    w = Writer(path, level=1)
    w.proc(1)
    n = max(10, int(100_000 * scale))
    stem = "/".join(["d" * 120] * 30)
    for i in range(n):
        w.file(f"proc/1/{stem}/{i:0>300}", b"x")
    w.close()


CASES = {
    "repeat15": (gen_repeat15, []),
    "distinct": (gen_distinct, []),
    "gzbomb": (gen_gzbomb, []),
    "gzbomb60": (gen_gzbomb60, []),
    "fdinfo": (gen_fdinfo, []),
    "smaps": (gen_smaps, ["--smaps"]),
    "members": (gen_members, []),
    "deep": (gen_deep, []),
}


def run_case(archive, extra, src, as_limit_mib, timeout):
    env = dict(os.environ)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("MEMTRACK_DEBUG", None)

    def limit():
        if as_limit_mib:
            n = as_limit_mib << 20
            resource.setrlimit(resource.RLIMIT_AS, (n, n))

    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "memtrack", "--root", archive, "--bytes", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=limit)
    # read both pipes to the end (a thread-free way: communicate), then reap with wait4
    # ourselves for the child's own rusage
    p.wait = lambda *a, **k: 0          # keep communicate() from reaping the child
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    text = (err or out).decode("utf-8", "replace").strip().splitlines()
    first = text[0] if text else ""
    if rc == 0:
        first = next((ln for ln in out.decode("utf-8", "replace").splitlines() if "TOTAL" in ln), first)
    return rc, ru.ru_maxrss / 1024, wall, ru.ru_utime + ru.ru_stime, first


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--case", action="append", choices=sorted(CASES), help="run only these")
    ap.add_argument("--scale", type=float, default=1.0, help="size factor (default 1)")
    ap.add_argument("--src", default=SRC, help="the memtrack source tree to run (default this one)")
    ap.add_argument("--as-limit", type=int, default=0, metavar="MIB", help="RLIMIT_AS of the child")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--dir", help="keep the archives here (default a temporary directory)")
    args = ap.parse_args()
    names = args.case or list(CASES)
    with tempfile.TemporaryDirectory(prefix="memtrack-hostile-") as tmp:
        where = args.dir or tmp
        os.makedirs(where, exist_ok=True)
        print(f"memtrack from {args.src}; scale {args.scale}"
              + (f"; RLIMIT_AS {args.as_limit} MiB" if args.as_limit else ""))
        print(f"{'case':<10} {'archive':>10} {'rc':>3} {'peak RSS':>10} {'wall s':>7} {'cpu s':>7}  first line")
        for name in names:
            gen, extra = CASES[name]
            path = os.path.join(where, f"{name}-{args.scale:g}.tar.gz")
            if not os.path.exists(path):
                gen(path + ".part", args.scale)     # renamed when whole: a rerun may reuse it
                os.rename(path + ".part", path)
            size = os.path.getsize(path)
            rc, rss, wall, cpu, first = run_case(path, extra, args.src, args.as_limit, args.timeout)
            print(f"{name:<10} {size / 1e6:>8.1f}MB {rc:>3} {rss:>7.0f}MiB {wall:>7.1f} {cpu:>7.1f}  {first[:110]}",
                  flush=True)


if __name__ == "__main__":
    main()
