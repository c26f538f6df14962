"""Shared by the tests of the sh capture script, adb, ssh: live holder processes, a PATH of
busybox applets, and the numbers two snapshots must agree on."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HELPERS = os.path.join(HERE, "helpers")
SRC = os.path.join(os.path.dirname(HERE), "src")
SCRIPT = os.path.join(SRC, "memtrack", "data", "capture.sh")


class Holders:
    """The holder program running: parent and forked child share every buffer."""

    def __init__(self, tag: str = "plain", comm: str = "mt-holder"):
        self.comm = comm
        self.proc = subprocess.Popen([sys.executable, os.path.join(HELPERS, "holder.py"), tag],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, MT_HOLDER_COMM=comm))
        line = self.proc.stdout.readline().split()
        if len(line) != 3:
            self.close()
            raise RuntimeError("holder did not start")
        self.pid, self.child, self.shmid = map(int, line)
        self.pids = [self.pid, self.child]

    def close(self):
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


APPLETS = ("cat", "ls", "readlink", "stat", "tar", "mkdir", "ln", "rm", "date")


def busybox_path(tmp_path, applets=("sh",) + APPLETS):
    """A directory holding only busybox applets: PATH=it runs the script on busybox alone."""
    import pytest
    bb = shutil.which("busybox")
    if bb is None:
        pytest.skip("busybox is not installed (scripts/test.sh installs it as root)")
    return _applet_dir(tmp_path / "bb-bin", {a: bb for a in applets})


def android_path(tmp_path, applets=APPLETS):
    """Android's userland: mksh as sh, toybox for the tools."""
    import pytest
    mksh, toybox = shutil.which("mksh"), shutil.which("toybox")
    if mksh is None or toybox is None:
        pytest.skip("mksh or toybox is not installed (scripts/test.sh installs them as root)")
    links = {a: toybox for a in applets}
    links["sh"] = mksh
    return _applet_dir(tmp_path / "android-bin", links)


def _applet_dir(d, links):
    d.mkdir(exist_ok=True)
    for name, target in links.items():
        link = d / name
        if not link.exists():
            link.symlink_to(target)
    return str(d)


def numbers(snap, pids):
    """What must agree: per-process usage by kind, and each held buffer's facts."""
    from memtrack.account import account
    acct = account(snap)
    per = {}
    for pid in pids:
        pu = acct.processes[pid]
        per[pid] = (pu.total.as_dict(), {k: u.as_dict() for k, u in sorted(pu.by_kind.items())})
    want = set(pids)
    bufs = sorted((b.kind, b.dev or "", b.inode or 0, b.size if b.size is not None else -1, b.holders,
                   b.fd_refs, b.map_refs, b.name or "") for b in snap.buffers if want & set(b.holders))
    return per, bufs


def assert_rich(per, pids):
    """The holders' scan has what the test is about: every kind, every size known."""
    for pid in pids:
        total, kinds = per[pid]
        assert set(kinds) == {"memfd", "shm", "sysv", "shmem"}, kinds
        # memfd 3 + 7 + 6 MiB, shm 2, sysv 5, shared anonymous 4: 27 MiB, all sizes known
        assert total["rss"] == 27 << 20, total
        assert total["unknown_size"] == 0, total

