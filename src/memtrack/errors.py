"""The error vocabulary. Sources translate OSError once, here; the scan turns the
per-process kinds into counts and never lets them crash a run."""
from __future__ import annotations

import errno
import functools


class MemtrackError(Exception):
    """A user-facing failure: the CLI prints it as one line and exits 2."""


class SourceError(MemtrackError):
    """The source (directory, archive, snapshot file) is missing or malformed."""


class BpfUnavailable(MemtrackError):
    """The bpf backend cannot run here; the text names the missing piece."""


class ProcessGone(Exception):
    """Base of the per-process conditions a scan counts instead of failing."""


class Vanished(ProcessGone):
    """The process (or one of its fds) went away while we were reading it."""


class Denied(ProcessGone):
    """We lack the rights to read this (ptrace access mode, file mode)."""


class Unreadable(ProcessGone):
    """Reading failed for another reason (EIO, a directory where a file was expected...)."""


_VANISHED = {errno.ENOENT, errno.ESRCH, errno.ENOTDIR}
_DENIED = {errno.EACCES, errno.EPERM}


def translate_oserror(exc: OSError) -> ProcessGone:
    if exc.errno in _VANISHED:
        return Vanished(str(exc))
    if exc.errno in _DENIED:
        return Denied(str(exc))
    return Unreadable(str(exc))


def translated(fn):
    """Decorator: OSError raised by a source primitive becomes Vanished/Denied/Unreadable."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            raise translate_oserror(exc) from None
    return wrapper
