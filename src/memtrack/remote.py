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
import re
import shlex
import shutil
import subprocess
import tarfile
import time
import zlib
from typing import Dict, List, Optional, Sequence, Set

from . import __version__
from .errors import MemtrackError, SourceError
from .sources.archive import ArchiveSource, TooMuch, clean_name
from .util.atomic import atomic_open

SCRIPT_NAME = "capture.sh"
STREAM_MAGIC = b"memtrack-stream "


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


# -- what the script prints --------------------------------------------------------------
class Tree:
    """Files, symlinks and directories by relative path: a capture before it is archived."""

    def __init__(self):
        self.files: Dict[str, bytes] = {}
        self.links: Dict[str, str] = {}
        self.dirs: Set[str] = set()
        self.format = "?"

    def drop(self, rel: str) -> None:
        pre = rel + "/"
        for d in (self.files, self.links):
            for k in [k for k in d if k == rel or k.startswith(pre)]:
                del d[k]
        self.dirs = {d for d in self.dirs if d != rel and not d.startswith(pre)}

    def meta(self) -> dict:
        try:
            doc = json.loads(self.files.get("meta.json", b"{}").decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}


def parse_stream(data: bytes) -> Tree:
    """The script's stream format (see the header of capture.sh)."""
    first, nl, rest = data.partition(b"\n")
    head = first.rstrip(b"\r").split(b" ")
    if not nl or len(head) != 3 or head[0] != b"memtrack-stream" or head[1] != b"1":
        raise SourceError("not a memtrack capture stream (bad first line)")
    boundary = head[2]
    if len(boundary) < 8:
        raise SourceError("capture stream: boundary too short")
    chunks = rest.split(b"\n" + boundary + b" ")
    if chunks[0]:
        raise SourceError("capture stream: data before the first record")
    tree = Tree()
    tree.format = "stream"
    ended = False
    for n, chunk in enumerate(chunks[1:], 1):
        if ended:
            raise SourceError("capture stream: records after the end record")
        line, nl, body = chunk.partition(b"\n")
        kind, _, name = line.decode("utf-8", "surrogateescape").partition(" ")
        if not nl:
            raise SourceError(f"capture stream: record {n} is cut short")
        if kind == "E":
            ended = True
            continue
        rel = clean_name(name)
        if rel is None:
            raise SourceError(f"capture stream: record {n} has an unsafe path {name!r}")
        if kind == "F":
            tree.files[rel] = body
        elif kind == "L":
            tree.links[rel] = body.decode("utf-8", "surrogateescape")
        elif kind == "D":
            tree.dirs.add(rel)
        elif kind == "X":
            tree.files.pop(rel, None)
        elif kind == "Z":
            tree.drop(rel)
        else:
            raise SourceError(f"capture stream: record {n} has unknown type {kind!r}")
    if not ended:
        raise SourceError("capture stream is truncated (no end record): the script stopped early")
    return tree


def parse_tar(data: bytes) -> Tree:
    tree = Tree()
    tree.format = "tar"
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tf:
            for m in tf:
                rel = clean_name(m.name)
                if rel is None:
                    continue
                if m.isdir():
                    tree.dirs.add(rel)
                elif m.issym():
                    tree.links[rel] = m.linkname
                elif m.isreg():
                    f = tf.extractfile(m)
                    tree.files[rel] = f.read() if f else b""
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise SourceError(f"capture tar stream is unreadable ({exc})") from None
    return tree


def looks_like_tar(data: bytes) -> bool:
    return data[:2] == b"\x1f\x8b" or (len(data) >= 262 and data[257:262] == b"ustar")


TAR_END = re.compile(rb"\nmemtrack-tar-end \d+\n\Z")


def decode(data: bytes, complete: bool = False) -> Tree:
    """Whatever the script printed: its stream format, or a (possibly compressed) tar.
    complete: the output comes straight from the script, so a tar must end with the
    script's end line (a tar cut at a member boundary would otherwise read as whole)."""
    if data.startswith(STREAM_MAGIC):
        first = data.split(b"\n", 1)[0]
        if first.endswith(b"\r"):
            # a pty on the way (old `adb shell`) turned every \n into \r\n: undo it
            data = data.replace(b"\r\n", b"\n")
        return parse_stream(data)
    if looks_like_tar(data):
        if complete and not TAR_END.search(data[-64:]):
            raise SourceError("capture tar stream is truncated (no end line): the script stopped early")
        tree = parse_tar(data)
        if "proc" not in tree.dirs and not any(k.startswith("proc/") for k in tree.files):
            raise SourceError("the tar stream holds no proc/ tree: not a memtrack capture")
        return tree
    raise SourceError("not a memtrack capture stream or tar")


class TreeSource(ArchiveSource):
    """A decoded capture read in memory, like an archive."""

    def __init__(self, tree: Tree, label: str):
        self._tree = tree
        super().__init__(label)
        self.label = label

    def _load(self) -> None:
        t = self._tree
        for d in sorted(t.dirs):
            self.dirs.setdefault(d, set())
            if "/" in d:
                self._add_dirs(d)
            else:
                self.dirs[""].add(d)
        for rel, data in t.files.items():
            parts = rel.split("/")
            if len(parts) == 3 and parts[0] == "proc" and parts[2] in ("maps", "smaps"):
                # as an archive keeps it: the shared-buffer lines, each address range once
                try:
                    data = self._filtered(io.BytesIO(data), len(data), parts)
                except TooMuch as exc:
                    raise SourceError(f"{self.path}: {exc}, refusing") from None
            self.files[rel] = data
            self._add_dirs(rel)
        for rel, target in t.links.items():
            self.links[rel] = target
            self._add_dirs(rel)
        if "proc" not in self.dirs:
            raise SourceError(f"{self.path}: no proc/ directory in the capture")
        self._note_map_dups()


def archive_meta(tree: Tree, transport: str) -> dict:
    meta = tree.meta()
    meta.setdefault("taken_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    meta["captured_by"] = meta.pop("tool", "memtrack-capture.sh")
    meta["tool"] = "memtrack"
    meta["version"] = __version__
    meta["transport"] = transport
    meta["format"] = {"fdstat": "fd dev ino size mode(octal) blocks(512 B)",
                      "mapstat": "start-end dev ino size mode(octal) blocks(512 B)",
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
