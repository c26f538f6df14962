"""A capture archive (.tar.gz, .tar, .tar.xz...), read member by member in one streaming
pass and kept in memory: nothing is ever extracted, no link is ever followed. Archives
come from other machines, so every member is treated as untrusted input."""
from __future__ import annotations

import datetime as _dt
import posixpath
import tarfile
import zlib
from typing import Dict, List, Set, Tuple

from ..errors import SourceError, Unreadable, Vanished
from .base import PathSource

MAX_MEMBER = 64 << 20        # larger members are skipped, and said so
MAX_TOTAL = 1 << 30          # bytes kept in memory in all
MAX_MEMBERS = 2_000_000


def looks_like_archive(path: str, head: bytes) -> bool:
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"


def _clean(name: str):
    """Relative posix path, or None for names that try to leave the archive root."""
    if name.startswith("/") or "\\" in name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


class ArchiveSource(PathSource):
    def __init__(self, path: str):
        self.path = path
        self.label = f"archive:{path}"
        self.files: Dict[str, bytes] = {}
        self.links: Dict[str, str] = {}
        self.dirs: Dict[str, Set[str]] = {"": set()}
        self.problems: List[str] = []
        self._mtime = 0
        self._load()

    def _add_dirs(self, rel: str) -> None:
        parent, _, name = rel.rpartition("/")
        while True:
            kids = self.dirs.get(parent)
            new = kids is None
            if new:
                kids = self.dirs[parent] = set()
            kids.add(name)
            if not new or not parent:
                break
            parent, _, name = parent.rpartition("/")

    def _load(self) -> None:
        total = count = 0
        skipped: Dict[str, int] = {}
        try:
            with tarfile.open(self.path, "r|*") as tf:
                for m in tf:
                    count += 1
                    if count > MAX_MEMBERS:
                        raise SourceError(f"{self.path}: more than {MAX_MEMBERS} members, refusing")
                    rel = _clean(m.name)
                    if rel is None:
                        skipped["unsafe name"] = skipped.get("unsafe name", 0) + 1
                        continue
                    self._mtime = max(self._mtime, int(m.mtime or 0))
                    if m.isdir():
                        self.dirs.setdefault(rel, set())
                        if "/" in rel:
                            self._add_dirs(rel)
                        continue
                    if rel in self.files or rel in self.links:
                        skipped["duplicate member"] = skipped.get("duplicate member", 0) + 1
                        continue
                    if m.issym():
                        self.links[rel] = m.linkname
                    elif m.isreg():
                        if m.size > MAX_MEMBER:
                            skipped[f"over {MAX_MEMBER >> 20} MiB"] = skipped.get(f"over {MAX_MEMBER >> 20} MiB", 0) + 1
                            continue
                        total += m.size
                        if total > MAX_TOTAL:
                            raise SourceError(f"{self.path}: more than {MAX_TOTAL >> 20} MiB of content, refusing")
                        f = tf.extractfile(m)
                        self.files[rel] = f.read() if f else b""
                    else:
                        skipped["not a file or symlink"] = skipped.get("not a file or symlink", 0) + 1
                        continue
                    self._add_dirs(rel)
        except SourceError:
            raise
        except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
            if not self.files and not self.links:
                raise SourceError(f"{self.path}: not a readable capture archive ({exc})") from None
            self.problems.append(f"archive is truncated or corrupt after {count} members ({exc}); "
                                 "read what came before")
        for why, n in sorted(skipped.items()):
            self.problems.append(f"{n} archive members skipped: {why}")
        if "proc" not in self.dirs:
            raise SourceError(f"{self.path}: no proc/ directory in the archive: not a memtrack capture")

    def exists(self, rel):
        return rel in self.dirs or rel in self.files or rel in self.links

    def read(self, rel):
        try:
            return self.files[rel]
        except KeyError:
            if rel in self.dirs or rel in self.links:
                raise Unreadable(f"{rel}: not a regular file") from None
            raise Vanished(f"{rel}: not in archive") from None

    def readlink(self, rel):
        try:
            return self.links[rel]
        except KeyError:
            raise Vanished(f"{rel}: not a symlink in archive") from None

    def listdir(self, rel):
        try:
            return sorted(self.dirs[rel])
        except KeyError:
            raise Vanished(f"{rel}: no such directory in archive") from None

    def taken_at(self):
        t = self.meta().get("taken_at")
        if isinstance(t, str):
            return t
        if not self._mtime:
            return ""
        return _dt.datetime.fromtimestamp(self._mtime, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
