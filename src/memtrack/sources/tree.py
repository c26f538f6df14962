"""A directory laid out like / (proc/..., sys/...): a capture unpacked, or a test fixture.

The tree may come from elsewhere, so it is read like an archive: every path is walked one
component at a time with O_NOFOLLOW (a symlink is never followed, except the fd/<n> links,
which are only readlink'ed), only regular files are read (a `maps` that is a FIFO or a link
to /dev/zero is refused, never waited on), and at most MAX_FILE bytes of each. What is
refused is counted and named in the snapshot notes."""
from __future__ import annotations

import datetime as _dt
import errno
import os
import stat as _stat
from typing import Dict, List

from ..errors import SourceError, Unreadable, translate_oserror
from .base import PathSource, shown

MAX_FILE = 64 << 20
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NAMES_SHOWN = 3


class DirSource(PathSource):
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.label = f"dir:{root}"
        self._refused: Dict[str, list] = {}
        self._cost = 0                    # what the kept mappings cost (read_maps)
        self._map_dups: Dict[str, int] = {}
        # the last directory walked, kept open: a process's files share a few directories,
        # so most reads reuse it (a dup) instead of walking every component again
        self._last_key = None
        self._last_fd = None
        self._check()

    def _check(self) -> None:
        """A tree is a capture if it has a proc/ directory we may read: refuse any other
        directory (/tmp, /etc, an empty one) up front, as an archive without proc/ is."""
        where = self.root
        try:
            fd = os.open(self.root, _O_DIR)
            try:
                where = os.path.join(self.root, "proc")
                os.close(os.open("proc", _O_DIR, dir_fd=fd))
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):     # ELOOP: proc is a link
                raise SourceError(f"{self.root}: no proc/ directory in it: not a memtrack capture") from None
            raise SourceError(f"{where}: {exc.strerror or exc}") from None

    def close(self):
        if self._last_fd is not None:
            os.close(self._last_fd)
            self._last_fd = self._last_key = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def problems(self) -> List[str]:
        out = []
        for why, (n, names) in sorted(self._refused.items()):
            more = ", ..." if n > len(names) else ""
            out.append(f"{n} files of the tree refused: {why} ({', '.join(names)}{more})")
        if self._map_dups:
            rels = sorted(self._map_dups)
            more = ", ..." if len(rels) > _NAMES_SHOWN else ""
            out.append(f"{sum(self._map_dups.values())} duplicate maps lines ignored (an address "
                       f"range printed again: no kernel does; the first wins), in "
                       f"{', '.join(shown(r) for r in rels[:_NAMES_SHOWN])}{more}")
        return out

    def _refuse(self, why: str, rel: str):
        e = self._refused.setdefault(why, [0, []])
        e[0] += 1
        if len(e[1]) < _NAMES_SHOWN:
            e[1].append(shown(rel))
        return Unreadable(f"{rel}: {why}")

    def _oserror(self, exc: OSError, rel: str):
        if exc.errno == errno.ELOOP:
            return self._refuse("symbolic link (not followed)", rel)
        return translate_oserror(exc)

    def _dir(self, parts: List[str], rel: str) -> int:
        """An fd of the directory root/parts..., no component followed if a symlink."""
        key = tuple(parts)
        if key == self._last_key:
            return os.dup(self._last_fd)
        fd = self._walk(parts, rel)
        self.close()
        self._last_key, self._last_fd = key, os.dup(fd)
        return fd

    def _walk(self, parts: List[str], rel: str) -> int:
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise translate_oserror(exc) from None
        c = None
        try:
            for c in parts:
                nfd = os.open(c, _O_DIR, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except OSError as exc:
            try:
                link = _stat.S_ISLNK(os.stat(c, dir_fd=fd, follow_symlinks=False).st_mode)
            except OSError:
                link = False
            os.close(fd)
            if link:
                raise self._refuse("symbolic link (not followed)", rel) from None
            raise self._oserror(exc, rel) from None
        return fd

    def _parent(self, rel: str):
        parts = [p for p in rel.split("/") if p]
        if not parts or ".." in parts:
            raise self._refuse("path outside the tree", rel)
        return self._dir(parts[:-1], rel), parts[-1]

    def exists(self, rel):
        try:
            d, last = self._parent(rel)
        except Exception:
            return False
        try:
            os.stat(last, dir_fd=d, follow_symlinks=False)
            return True
        except OSError:
            return False
        finally:
            os.close(d)

    def _open_file(self, rel):
        """An fd of the regular file rel (its path walked without following links)."""
        d, last = self._parent(rel)
        try:
            fd = os.open(last, _O_FILE, dir_fd=d)
        except OSError as exc:
            raise self._oserror(exc, rel) from None
        finally:
            os.close(d)
        try:
            if not _stat.S_ISREG(os.fstat(fd).st_mode):
                raise self._refuse("not a regular file", rel)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read(self, rel):
        fd = self._open_file(rel)
        try:
            parts, left = [], MAX_FILE + 1
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                parts.append(chunk)
                left -= len(chunk)
            if left <= 0:
                raise self._refuse(f"over {MAX_FILE >> 20} MiB", rel)
            return b"".join(parts)
        except OSError as exc:
            raise self._oserror(exc, rel) from None
        finally:
            os.close(fd)

    def read_maps(self, rel, smaps=False):
        """maps (smaps) streamed through SharedFilter a chunk at a time: only the shared-
        buffer mappings are kept, each address range once, and what they will cost (the
        archive's REF_COST each) is charged to the archive's memory budget, past which the
        tree is refused (a SourceError: one line)."""
        from ..readers.maps import SharedFilter
        from .archive import CHUNK, MAX_TOTAL, REF_COST, RESERVE
        fd = self._open_file(rel)
        filt = SharedFilter(smaps)
        try:
            left = MAX_FILE + 1
            while left > 0:
                chunk = os.read(fd, min(left, CHUNK))
                if not chunk:
                    break
                left -= len(chunk)
                filt.feed(chunk)
                if RESERVE + self._cost + filt.nbytes + (filt.kept + filt.extra) * REF_COST > MAX_TOTAL:
                    raise SourceError(f"{self.root}: more than {MAX_TOTAL >> 20} MiB of mappings "
                                      f"({filt.kept + filt.extra} distinct buffer mappings in {rel}), refusing")
            if left <= 0:
                raise self._refuse(f"over {MAX_FILE >> 20} MiB", rel)
        except OSError as exc:
            raise self._oserror(exc, rel) from None
        finally:
            os.close(fd)
        data = filt.finish()
        self._cost += filt.nbytes + (filt.kept + filt.extra) * REF_COST
        if filt.dups and not smaps:
            self._map_dups[rel] = filt.dups
        return data

    def readlink(self, rel):
        d, last = self._parent(rel)
        try:
            return os.readlink(last, dir_fd=d)
        except OSError as exc:
            raise translate_oserror(exc) from None
        finally:
            os.close(d)

    def listdir(self, rel):
        parts = [p for p in rel.split("/") if p]
        if ".." in parts:
            raise self._refuse("path outside the tree", rel)
        d = self._dir(parts, rel)
        try:
            return os.listdir(d)
        except OSError as exc:
            raise translate_oserror(exc) from None
        finally:
            os.close(d)

    def taken_at(self):
        t = self.meta().get("taken_at")
        if isinstance(t, str):
            return t
        try:
            mtime = os.stat(os.path.join(self.root, "proc"), follow_symlinks=False).st_mtime
        except OSError:
            return ""
        return _dt.datetime.fromtimestamp(mtime, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
