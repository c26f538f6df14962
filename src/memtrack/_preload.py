"""The BPF object loaded in a thread while the CLI imports the rest.

Loading (libbpf reads the kernel's BTF, relocates, the kernel verifies) takes about 20 ms
of C that holds no GIL; importing memtrack takes about 25 ms of Python. A root `memtrack`
command that will scan this machine once starts the load first (memtrack.__main__ calls
early()), and BpfScanner takes the result (take()) instead of loading again. The guess is
made from the command line before it is parsed; a wrong guess costs a load nobody uses
(closed at take(), or freed at exit). The thread makes the scanner's own checks first
(rights, pid namespace, libbpf, BTF, kernel: bpf_policy.unavailable), so it calls bpf() only
where the scanner would; and nothing is read through the object before the scanner has
taken it: the guess loads, it never scans.

MEMTRACK_PRELOAD=0 turns it off. Standard library only; it imports no other memtrack
module but _libbpf (ctypes) and bpf_policy, which the thread needs and the scan would
import anyway.
"""
from __future__ import annotations

import os
import sys

# the one-shot commands that scan this machine (top, serve, record keep a reused scanner,
# which loads more programs; the others read files or another machine)
ONE_SHOT = frozenset(("ps", "buffers", "summary", "show", "matrix", "gpu", "dmabuf-dump", "textfile"))
NOT_LIVE = ("--root", "--adb", "--ssh", "--help", "--version")
COMMANDS = ONE_SHOT | frozenset(("top", "serve", "record", "report", "plot", "export-trace",
                                 "diff", "capture", "tag"))

_job = None


def wanted(argv, orig_argv=None, euid=None, env=None) -> bool:
    """Whether this process is the memtrack CLI, as root, about to scan this machine once
    with --backend auto or bpf (a guess from the words on its command line)."""
    env = os.environ if env is None else env
    if env.get("MEMTRACK_PRELOAD", "1") == "0":
        return False
    if (os.geteuid() if euid is None else euid) != 0 or not argv:
        return False
    if os.path.basename(argv[0]) == "memtrack":
        args = list(argv[1:])
    elif argv[0] == "-m" and orig_argv and "memtrack" in orig_argv:
        # python -m memtrack: the words after the module name
        i = list(orig_argv).index("memtrack")
        if i == 0 or orig_argv[i - 1] != "-m":
            return False
        args = list(orig_argv[i + 1:])
    else:
        return False
    for i, a in enumerate(args):
        if a == "-h":
            return False
        if not a.startswith("--") or len(a) < 3:
            continue
        # argparse takes any unambiguous prefix of a long option (--ro, --back): so does this
        name, eq, value = a.partition("=")
        if any(o.startswith(name) for o in NOT_LIVE):
            return False
        if "--backend".startswith(name) and (value if eq else "".join(args[i + 1:i + 2])) == "procfs":
            return False
    command = next((a for a in args if a in COMMANDS), "ps")
    return command in ONE_SHOT


class _Job:
    def __init__(self, lib, policy):
        import threading
        self.lib, self.policy = lib, policy
        # what BpfScanner(reuse=False) asks of open_iterators (see take())
        self.params = (lib.OBJECT, lib.DRM_MAJOR, False)
        self.result = None
        self.thread = threading.Thread(target=self._run, name="memtrack-bpf-load", daemon=True)
        self.thread.start()

    def _run(self):
        try:
            # the checks BpfScanner makes before it loads (rights, pid namespace, libbpf,
            # BTF, kernel, object): no bpf() call where the backend would not make one
            if self.policy.unavailable(self.params[0]) is None:
                self.result = self.lib.open_iterators(*self.params)
        except Exception:
            self.result = None     # BpfScanner loads again and reports the failure itself


def early() -> None:
    """Start the load, if wanted() guesses it will be used (once per process)."""
    global _job
    if _job is not None:
        return
    try:
        if not wanted(sys.argv, getattr(sys, "orig_argv", None)):
            return
        from . import _libbpf, bpf_policy
        _job = _Job(_libbpf, bpf_policy)
    except Exception:
        _job = None                # a guess: never the reason a command fails


def take(path: str, drm_major: int, reuse: bool):
    """What open_iterators(path, drm_major, reuse) would return, if the early load
    was made for exactly that and succeeded; else None. Once: the job is consumed (a load
    for other parameters is closed)."""
    global _job
    job, _job = _job, None
    if job is None:
        return None
    job.thread.join()
    got = job.result
    if got is not None and job.params != (path, drm_major, reuse):
        got[0].close()
        got = None
    return got
