"""A directory laid out like / (proc/..., sys/...): a capture unpacked, or a test fixture."""
from __future__ import annotations

import datetime as _dt
import os

from ..errors import translated
from .base import PathSource


class DirSource(PathSource):
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.label = f"dir:{root}"

    def _p(self, rel):
        return os.path.join(self.root, rel)

    def exists(self, rel):
        return os.path.lexists(self._p(rel))

    @translated
    def read(self, rel):
        with open(self._p(rel), "rb") as f:
            return f.read()

    @translated
    def readlink(self, rel):
        return os.readlink(self._p(rel))

    @translated
    def listdir(self, rel):
        return os.listdir(self._p(rel))

    def taken_at(self):
        t = self.meta().get("taken_at")
        if isinstance(t, str):
            return t
        try:
            mtime = os.stat(self._p("proc")).st_mtime
        except OSError:
            return ""
        return _dt.datetime.fromtimestamp(mtime, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
