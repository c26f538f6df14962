"""A capture archive (.tar.gz, .tar, .tar.xz...), read member by member in one streaming
pass and kept in memory: nothing is ever extracted, no link is ever followed. Archives
come from other machines, so every member is treated as untrusted input:

- only regular files, symlinks and directories are kept; hard links, devices, FIFOs and
  sparse members are skipped; names that are absolute, contain `..` or a backslash, are
  longer than MAX_NAME or deeper than MAX_DEPTH are skipped; duplicates keep the first;
- a member over MAX_MEMBER is skipped without being read (a seek on a plain tar);
- what is kept (contents, names and a per-entry overhead) is capped at MAX_TOTAL, what is
  decompressed (skipped data included) at MAX_STREAM, the members at MAX_MEMBERS, the
  extended headers (pax, GNU long names) at MAX_HEADER: past a cap the archive is refused;
- a truncated or corrupt archive keeps what came before, and says so.
Everything skipped is counted in the snapshot notes, with the first few names.
"""
from __future__ import annotations

import datetime as _dt
import os
import stat as _stat
import tarfile
import zlib
from typing import Dict, List, Set

from ..errors import SourceError, Unreadable, Vanished
from ..readers.maps import SharedFilter
from .base import PathSource, shown

MAX_MEMBER = 64 << 20        # larger members are skipped, and said so
MAX_TOTAL = 1 << 30          # the whole process's memory: what is kept, what the scan makes of it
RESERVE = 128 << 20          # of MAX_TOTAL: the interpreter, memtrack, one member being read
REF_COST = 2048              # what one fd link or kept mapping costs through scan, build and output (--json, matrix: ~1.2 KiB measured)
MAX_FDINFO = 1 << 20         # a kernel's fdinfo of a buffer or DRM fd is a few KiB
CHUNK = 1 << 20              # maps and smaps are read (and filtered) a chunk at a time
STREAM_BUF = 256 << 10       # tarfile's reads of a compressed stream
GZIP_MAX_RATIO = 1032        # deflate never expands one byte to more than this
MAX_STREAM = 4 << 30         # bytes decompressed in all, skipped members included
MAX_MEMBERS = 2_000_000
MAX_HEADER = 1 << 20         # a pax header or GNU long name/link
MAX_NAME = 4096              # PATH_MAX
MAX_DEPTH = 32               # the deepest capture path is 6 components
ENTRY_COST = 256             # what one kept entry costs beyond its bytes (dict slots, objects)
NAMES_SHOWN = 3


def looks_like_archive(path: str, head: bytes) -> bool:
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"


def is_maps_member(parts) -> bool:
    """proc/PID/maps or smaps, or a thread's (proc/PID/task/TID/maps: captures record a
    thread where the process's leader cannot say what it holds): filtered when kept."""
    n = len(parts)
    return parts[0] == "proc" and parts[-1] in ("maps", "smaps") and \
        (n == 3 or (n == 5 and parts[2] == "task"))


def is_fdinfo_member(parts) -> bool:
    n = len(parts)
    return parts[0] == "proc" and ((n == 4 and parts[2] == "fdinfo") or
                                   (n == 6 and parts[2] == "task" and parts[4] == "fdinfo"))


def clean_name(name: str):
    """Relative posix path, or None for names that try to leave the archive root."""
    if name.startswith("/") or "\\" in name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


class TooMuch(Exception):
    """A cap on the whole archive was reached: refuse it."""


class _Corrupt(Exception):
    """A header that is not a tar header, or the archive ends in the middle of one."""


class _SafeInfo(tarfile.TarInfo):
    """TarInfo that refuses huge extended headers before tarfile reads them into memory,
    and reports corrupt headers instead of letting tarfile end the archive silently."""

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            raise                          # the end-of-archive zero block: a clean end
        except tarfile.EmptyHeaderError:
            raise _Corrupt("the archive ends without an end-of-archive marker") from None
        except (tarfile.HeaderError, ValueError, UnicodeError, OverflowError) as exc:
            raise _Corrupt(f"bad tar header ({exc or type(exc).__name__})") from None

    def _proc_gnulong(self, tf):
        if self.size > MAX_HEADER:
            raise _Corrupt(f"GNU long name header of {self.size} bytes")
        return super()._proc_gnulong(tf)

    def _proc_pax(self, tf):
        if self.size > MAX_HEADER:
            raise _Corrupt(f"pax header of {self.size} bytes")
        return super()._proc_pax(tf)


class _Capped:
    """A decompressing reader that stops a decompression bomb at MAX_STREAM bytes."""

    def __init__(self, inner, limit, raw=None, max_ratio=None):
        self.inner, self.limit, self.count, self.eof = inner, limit, 0, False
        self.max_ratio = max_ratio
        # a pipe's size is unknown until its end: it is held to MAX_STREAM alone
        self.raw_size = os.fstat(raw.fileno()).st_size if hasattr(raw, "fileno") else None

    def could_hold(self, nbytes: int) -> bool:
        """Whether the file could decompress to nbytes more than so far: a gzip file to at
        most GZIP_MAX_RATIO times its size; bzip2 and xz have no such bound."""
        if self.max_ratio is None or self.raw_size is None:
            return True
        return self.count + nbytes <= (self.raw_size + 1) * self.max_ratio + (8 << 20)

    def read(self, n=-1):
        if n is None or n < 0:
            n = self.limit - self.count + 1
        data = self.inner.read(min(n, self.limit - self.count + 1))
        if not data and n:
            # tarfile skips a member in stream mode by reading block after block, and does
            # not stop at EOF: a member declaring 1 TB would spin for minutes. Stop it.
            if self.eof:
                raise EOFError("unexpected end of data")
            self.eof = True
        self.count += len(data)
        if self.count > self.limit:
            raise TooMuch(f"decompresses to more than {self.limit >> 20} MiB")
        return data


def _open_stream(path: str, piped=None):
    """(file object for tarfile, tarfile mode, file to close). Plain tars are read
    seekable, so a skipped member costs a seek; compressed ones stream through _Capped.
    piped: a pipe already opened (sources._Piped), read front to back, never seeked."""
    if piped is not None:
        f = piped
    else:
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise SourceError(f"{path}: {exc.strerror or exc}") from None
    try:
        if piped is not None:
            head = piped.head[:6]
        elif not _stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise SourceError(f"{path}: not a regular file")
        else:
            head = f.read(6)
            f.seek(0)
        if head[:2] == b"\x1f\x8b":
            import gzip
            inner = gzip.GzipFile(fileobj=f, mode="rb")
        elif head[:3] == b"BZh":
            import bz2
            inner = bz2.BZ2File(f, "rb")
        elif head[:6] == b"\xfd7zXZ\x00":
            try:
                import lzma
            except ImportError:
                raise SourceError(f"{path}: an xz archive, and this Python has no lzma module") from None
            inner = lzma.LZMAFile(f, "rb")
        elif piped is not None:
            return _Capped(f, MAX_STREAM), "r|", f      # a plain tar from a pipe: streamed too
        else:
            return f, "r:", f
        return _Capped(inner, MAX_STREAM, f, GZIP_MAX_RATIO if head[:2] == b"\x1f\x8b" else None), "r|", f
    except BaseException:
        f.close()
        raise


def _read_errors():
    errs = [tarfile.TarError, EOFError, zlib.error, OSError, ValueError, _Corrupt,
            UnicodeError, OverflowError]
    try:
        import lzma
        errs.append(lzma.LZMAError)
    except ImportError:
        pass
    return tuple(errs)


class ArchiveSource(PathSource):
    def __init__(self, path: str, fileobj=None):
        self.path = path
        self.label = f"archive:{path}"
        self._piped = fileobj
        self.files: Dict[str, bytes] = {}
        self.links: Dict[str, str] = {}
        self.dirs: Dict[str, Set[str]] = {"": set()}
        self.problems: List[str] = []
        self.not_read: Set[str] = set()     # members skipped for their size: there, not read
        self._mtime = 0
        self._cost = RESERVE
        self._map_dups: Dict[int, int] = {}
        self._load()

    def _add_dirs(self, rel: str) -> None:
        parent, _, name = rel.rpartition("/")
        while True:
            kids = self.dirs.get(parent)
            new = kids is None
            if new:
                kids = self.dirs[parent] = set()
                self._charge(len(parent))
            kids.add(name)
            if not new or not parent:
                break
            parent, _, name = parent.rpartition("/")

    def _charge(self, nbytes: int) -> None:
        self._cost += nbytes + ENTRY_COST
        if self._cost > MAX_TOTAL:
            raise TooMuch(f"more than {MAX_TOTAL >> 20} MiB of content")

    def _filtered(self, f, size: int, parts) -> bytes:
        """A maps or smaps member read a chunk at a time, keeping only what the scan reads
        (readers.maps.SharedFilter): the shared-buffer mappings, each address range once,
        each charged for what the scan, the build and the output make of it."""
        filt = SharedFilter(smaps=parts[-1] == "smaps")
        left, charged = size, 0
        while left > 0:
            chunk = f.read(min(left, CHUNK))
            if not chunk:
                raise EOFError("unexpected end of data")
            left -= len(chunk)
            filt.feed(chunk)
            cost = filt.nbytes + (filt.kept + filt.extra) * REF_COST
            self._cost += cost - charged
            charged = cost
            if self._cost > MAX_TOTAL:
                raise TooMuch(f"more than {MAX_TOTAL >> 20} MiB of content and mappings "
                               f"({filt.kept + filt.extra} distinct buffer mappings in {'/'.join(parts)})")
        data = filt.finish()
        if filt.dups and parts[-1] == "maps":
            pid = int(parts[1]) if parts[1].isdigit() and len(parts[1]) < 20 else -1
            self._map_dups[pid] = self._map_dups.get(pid, 0) + filt.dups
        return data

    def _note_map_dups(self) -> None:
        if self._map_dups:
            pids = sorted(self._map_dups)
            more = ", ..." if len(pids) > NAMES_SHOWN else ""
            self.problems.append(
                f"{sum(self._map_dups.values())} duplicate maps lines ignored (an address range "
                f"printed again: no kernel does; the first wins), in pids "
                f"{', '.join(map(str, pids[:NAMES_SHOWN]))}{more}")

    def _load(self) -> None:
        count = 0
        skipped: Dict[str, List] = {}

        def skip(why, name):
            e = skipped.setdefault(why, [0, []])
            e[0] += 1
            if len(e[1]) < NAMES_SHOWN:
                e[1].append(shown(name))

        fileobj, mode, raw = _open_stream(self.path, self._piped)
        self._piped = None
        try:
            # bufsize: tarfile skips a member in a stream a bufsize at a time (10 KiB by
            # default: 400,000 Python calls per GiB of a bomb)
            with tarfile.open(fileobj=fileobj, mode=mode, tarinfo=_SafeInfo, bufsize=STREAM_BUF,
                              errors="surrogateescape") as tf:
                for m in tf:
                    tf.members = []           # tarfile keeps every TarInfo otherwise
                    count += 1
                    if count > MAX_MEMBERS:
                        raise TooMuch(f"more than {MAX_MEMBERS} members")
                    if isinstance(fileobj, _Capped) and m.size > 0 and \
                            fileobj.count + m.size > fileobj.limit and fileobj.could_hold(m.size):
                        # every byte a member declares is decompressed, read or skipped:
                        # refuse the bomb on its header, not after seconds of inflating it.
                        # (A member the rest of the file cannot hold is a truncated archive.)
                        raise TooMuch(f"decompresses to more than {fileobj.limit >> 20} MiB "
                                       f"(a member declares {m.size} bytes)")
                    name = m.name
                    if len(name) > MAX_NAME or name.count("/") > MAX_DEPTH:
                        skip("name too long or too deep", name)
                        continue
                    rel = clean_name(name)
                    if rel is None:
                        skip("unsafe name", name)
                        continue
                    mt = m.mtime
                    if isinstance(mt, (int, float)) and 0 <= mt < (1 << 33) and mt > self._mtime:
                        self._mtime = int(mt)
                    if m.isdir():
                        if rel not in self.dirs:
                            self._charge(len(rel))
                            self.dirs[rel] = set()
                        if "/" in rel:
                            self._add_dirs(rel)
                        continue
                    if rel in self.files or rel in self.links:
                        skip("duplicate member", name)
                        continue
                    if m.issym():
                        if len(m.linkname) > MAX_NAME:
                            skip("link target too long", name)
                            continue
                        # an fd link is a reference: charged for what the scan makes of it
                        self._charge(len(rel) + len(m.linkname) + REF_COST)
                        self.links[rel] = m.linkname
                    elif m.issparse():
                        skip("sparse member", name)
                        continue
                    elif m.isreg():
                        if m.size < 0:                 # base-256 header fields can say so
                            skip("negative size", name)
                            continue
                        if m.size > MAX_MEMBER:
                            skip(f"over {MAX_MEMBER >> 20} MiB, not read", name)
                            self.not_read.add(rel)
                            continue
                        parts = rel.split("/")
                        if is_maps_member(parts):
                            self._charge(len(rel))
                            self.files[rel] = self._filtered(tf.extractfile(m), m.size, parts)
                        elif is_fdinfo_member(parts) and m.size > MAX_FDINFO:
                            skip(f"fdinfo over {MAX_FDINFO >> 20} MiB, not read", name)
                            continue
                        else:
                            self._charge(len(rel) + m.size)
                            f = tf.extractfile(m)
                            data = f.read() if f else b""
                            if len(data) != m.size:
                                raise EOFError("unexpected end of data")
                            self.files[rel] = data
                    elif m.islnk():
                        skip("hard link", name)
                        continue
                    else:
                        skip("device, FIFO or other special file", name)
                        continue
                    self._add_dirs(rel)
        except TooMuch as exc:
            raise SourceError(f"{self.path}: {exc}, refusing (a tar bomb?)") from None
        except SourceError:
            raise
        except _read_errors() as exc:
            if not self.files and not self.links:
                raise SourceError(f"{self.path}: not a readable capture archive "
                                  f"({shown(str(exc) or type(exc).__name__, 160)})") from None
            self.problems.append(f"archive is truncated or corrupt after {count} members "
                                 f"({shown(str(exc) or type(exc).__name__, 160)}); read what came before")
        finally:
            raw.close()
        self._note_map_dups()
        for why, (n, names) in sorted(skipped.items()):
            more = ", ..." if n > len(names) else ""
            self.problems.append(f"{n} archive members skipped: {why} ({', '.join(names)}{more})")
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
            if rel in self.not_read:
                # the process was captured, its file too large to read: not "exited"
                raise Unreadable(f"{rel}: over {MAX_MEMBER >> 20} MiB, not read") from None
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
