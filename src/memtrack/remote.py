"""Captures of machines without Python: run the POSIX sh script shipped in memtrack/data
(capture.sh) on the target through adb or ssh, decode what it prints (a tar stream or the
script's own stream format), and hand the result to the scanner as an in-memory archive,
or write it out as a normal capture archive (.tar.gz, the layout README.md's "Captures" describes).

Everything the target sends is untrusted: paths are cleaned as archive members are, links
are never followed, and a stream that does not end with its end record is refused.
"""
from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import time
from typing import List, Optional, Sequence, Set

from . import __version__
from .errors import MemtrackError, SourceError
# the stream's reader is a source (sources/stream.py); these names stay importable here
from .sources.stream import STREAM_MAGIC, Tree, TreeSource, decode, looks_like_tar, parse_stream, parse_tar  # noqa: F401
from .util.atomic import atomic_open

SCRIPT_NAME = "capture.sh"


class RemoteError(MemtrackError):
    """The target could not be reached, or the capture script failed there."""


def script_text() -> str:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", SCRIPT_NAME)
    with open(path, "r", encoding="utf-8") as f:
        return f.read()


# What memtrack asks the script for. The stream: no writes on the device, and on a machine
# with ~1,000 processes and 20,000 buffer fds 9 s against 38 s for tar, whose staging costs
# an `ln -s` per fd (busybox, 2 cores). The script alone still prefers tar (-f auto).
DEFAULT_FORMAT = "stream"


def script_args(fmt: str = DEFAULT_FORMAT, pids: Optional[Sequence[int]] = None, smaps: bool = False) -> List[str]:
    args = ["-f", fmt]
    if pids is not None:
        args += ["-p", ",".join(str(int(p)) for p in sorted(pids))]
    if smaps:
        args.append("--smaps")
    return args


def archive_meta(tree: Tree, transport: str) -> dict:
    meta = tree.meta()
    meta.setdefault("taken_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    meta["captured_by"] = meta.pop("tool", "memtrack-capture.sh")
    meta["tool"] = "memtrack"
    meta["version"] = __version__
    meta["transport"] = transport
    meta["format"] = {"fdstat": "fd dev ino size mode(octal)",
                      "mapstat": "start-end dev ino size mode(octal)",
                      "script_output": tree.format}
    return meta


def write_tree(tree: Tree, path: str, transport: str) -> int:
    """Write a decoded capture as a .tar.gz atomically. Returns the number of members."""
    mtime = time.time()
    meta = archive_meta(tree, transport)
    dirs: Set[str] = set(tree.dirs)
    for rel in list(tree.files) + list(tree.links):
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    n = 0
    with atomic_open(path) as raw, tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        def add(ti, data=None):
            ti.mtime = mtime
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)

        ti = tarfile.TarInfo("meta.json")
        body = json.dumps(meta, indent=1).encode() + b"\n"
        ti.size, ti.mode = len(body), 0o444
        add(ti, body)
        n += 1
        for d in sorted(dirs):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o555
            add(ti)
            n += 1
        for rel in sorted(tree.files):
            if rel == "meta.json":
                continue
            ti = tarfile.TarInfo(rel)
            ti.size, ti.mode = len(tree.files[rel]), 0o444
            add(ti, tree.files[rel])
            n += 1
        for rel in sorted(tree.links):
            ti = tarfile.TarInfo(rel)
            ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, tree.links[rel], 0o777
            add(ti)
            n += 1
    return n


# -- transports ---------------------------------------------------------------------------
def _tail(text: bytes, limit: int = 600) -> str:
    s = text.decode("utf-8", "replace").strip()
    lines = [ln.strip() for ln in s.splitlines() if ln.strip()]
    s = " | ".join(lines[-6:])
    return s[-limit:] if len(s) > limit else s


class Target:
    label = "?"

    def run_script(self, args: List[str]) -> bytes:
        raise NotImplementedError

    def capture(self, fmt: str = DEFAULT_FORMAT, pids=None, smaps: bool = False) -> Tree:
        out = self.run_script(script_args(fmt, pids, smaps))
        try:
            return decode(out, complete=True)
        except SourceError as exc:
            text = _tail(out) if out and not looks_like_tar(out) and not out.startswith(STREAM_MAGIC) else ""
            raise RemoteError(f"capture script failed on {self.label}: "
                              + (text or str(exc))) from None


def _timeout() -> float:
    try:
        return float(os.environ.get("MEMTRACK_REMOTE_TIMEOUT", "600"))
    except ValueError:
        raise MemtrackError("MEMTRACK_REMOTE_TIMEOUT must be a number of seconds") from None


def _run(cmd: List[str], what: str, stdin: Optional[bytes] = None):
    limit = _timeout()
    try:
        return subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=None if stdin is not None else subprocess.DEVNULL, timeout=limit)
    except subprocess.TimeoutExpired:
        raise RemoteError(f"{what} gave no complete capture within {limit:g} s "
                          "(MEMTRACK_REMOTE_TIMEOUT sets the limit)") from None
    except FileNotFoundError:
        raise RemoteError(f"{what} not found on PATH") from None
    except OSError as exc:
        raise RemoteError(f"cannot run {what}: {exc.strerror or exc}") from None


class AdbTarget(Target):
    """`adb [-s SERIAL] exec-out sh -c SCRIPT memtrack-capture ARGS`: exec-out is binary-clean
    (no pty); it takes no stdin, so the script travels in the command line."""

    def __init__(self, serial: Optional[str] = None):
        self.serial = serial or None
        self.label = f"adb device {self.serial}" if self.serial else "the adb device"
        self.adb = shutil.which("adb")
        if self.adb is None:
            raise RemoteError("adb not found on PATH (install Android platform-tools)")

    def _base(self) -> List[str]:
        return [self.adb] + (["-s", self.serial] if self.serial else [])

    def remote_command(self, args: List[str]) -> str:
        return " ".join(["sh", "-c", shlex.quote(script_text()), "memtrack-capture"] +
                        [shlex.quote(a) for a in args])

    def _check(self, rc: int, err: bytes) -> None:
        e = err.decode("utf-8", "replace")
        low = e.lower()
        if "no devices" in low or "no emulators" in low:
            raise RemoteError("adb: no device connected (see `adb devices`)")
        if "more than one" in low:
            raise RemoteError("adb: several devices connected: name one with --adb SERIAL (see `adb devices`)")
        if "unauthorized" in low:
            raise RemoteError("adb: device unauthorized: accept the USB debugging prompt on the device")
        if "not found" in low and self.serial and self.serial in e:
            raise RemoteError(f"adb: device {self.serial} not found (see `adb devices`)")
        if "offline" in low:
            raise RemoteError("adb: device offline (reconnect it, or `adb reconnect`)")

    def run_script(self, args):
        cmd = self.remote_command(args)
        p = _run(self._base() + ["exec-out", cmd], "adb")
        self._check(p.returncode, p.stderr)
        if p.returncode != 0 and not p.stdout:
            # exec-out unknown to an old adbd: the pty of `adb shell` mangles \n, which
            # decode() undoes for the stream format
            stream = list(args)
            stream[1] = "stream"              # script_args() starts with -f FORMAT
            q = _run(self._base() + ["shell", self.remote_command(stream)], "adb")
            self._check(q.returncode, q.stderr)
            if q.stdout:
                return q.stdout
            raise RemoteError(f"adb failed (exit {p.returncode}): {_tail(p.stderr + q.stderr) or 'no output'}")
        if p.returncode != 0 and not (p.stdout.startswith(STREAM_MAGIC) or looks_like_tar(p.stdout)):
            raise RemoteError(f"capture script failed on {self.label} (exit {p.returncode}): "
                              f"{_tail(p.stderr + p.stdout) or 'no output'}")
        return p.stdout


class SshTarget(Target):
    """`ssh HOST sh -s -- ARGS` with the script on stdin. MEMTRACK_SSH overrides the ssh
    command (e.g. "ssh -F ./config -p 2222"), like GIT_SSH_COMMAND."""

    def __init__(self, host: str):
        if not host or host.startswith("-"):
            raise RemoteError(f"--ssh: not a host: {host!r}")
        self.host = host
        self.label = host
        self.cmd = shlex.split(os.environ.get("MEMTRACK_SSH") or "ssh")
        if not self.cmd or shutil.which(self.cmd[0]) is None:
            raise RemoteError(f"{self.cmd[0] if self.cmd else 'ssh'} not found on PATH")

    def run_script(self, args):
        remote = " ".join(["sh", "-s", "--"] + [shlex.quote(a) for a in args])
        p = _run(self.cmd + ["-o", "BatchMode=yes", "-T", self.host, remote], "ssh",
                 stdin=script_text().encode())
        if p.returncode == 255:
            raise RemoteError(f"ssh {self.host}: {_tail(p.stderr) or 'connection failed'}")
        if p.returncode != 0:
            raise RemoteError(f"capture script failed on {self.host} (exit {p.returncode}): "
                              f"{_tail(p.stderr) or _tail(p.stdout) or 'no output'}")
        return p.stdout


def target_from_args(args) -> Optional[Target]:
    adb = getattr(args, "adb", None)
    ssh = getattr(args, "ssh", None)
    if adb is not None and ssh:
        raise MemtrackError("--adb and --ssh are exclusive")
    if (adb is not None or ssh) and getattr(args, "root", None):
        raise MemtrackError("--root reads a capture; --adb/--ssh capture a device: pick one")
    if adb is not None:
        return AdbTarget(adb)
    if ssh:
        return SshTarget(ssh)
    return None


def transport_name(t: Target) -> str:
    if isinstance(t, AdbTarget):
        return "adb:" + (t.serial or "")
    if isinstance(t, SshTarget):
        return "ssh:" + t.host
    return "?"
