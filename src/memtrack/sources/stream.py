"""What the capture script (data/capture.sh) prints, decoded: its stream format or a tar,
as a Tree of files, links and directories, read like an archive (TreeSource).

Everything the target sends is untrusted: paths are cleaned as archive members are, links
are never followed, and a stream that does not end with its end record is refused.
"""
from __future__ import annotations

import io
import json
import re
import tarfile
import zlib
from typing import Dict, Set

from ..errors import SourceError
from .archive import ArchiveSource, TooMuch, clean_name, is_maps_member

STREAM_MAGIC = b"memtrack-stream "


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
            if is_maps_member(parts):
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
