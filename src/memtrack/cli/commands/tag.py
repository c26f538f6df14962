"""memtrack tag PID FD NAME: name a dma-buf (DMA_BUF_SET_NAME), so every view shows the name."""
from __future__ import annotations

NAME = "tag"
HELP = "name the dma-buf behind fd FD of process PID (DMA_BUF_SET_NAME, via pidfd_getfd)"
ORDER = 20


def add_arguments(p):
    p.add_argument("tag_pid", type=int, metavar="PID")
    p.add_argument("tag_fd", type=int, metavar="FD")
    p.add_argument("tag_name", metavar="NAME", help="at most 31 bytes (UTF-8)")


def run(args) -> int:
    from ...errors import MemtrackError
    from ...tag import tag
    if args.root:
        raise MemtrackError("tag acts on this machine; --root is for reading captures")
    if getattr(args, "adb", None) is not None or getattr(args, "ssh", None):
        raise MemtrackError("tag acts on this machine; --adb/--ssh only capture a device")
    from ..common import refuse
    refuse(args, "tag", "pid", "kind", "json", "csv", why="it names one buffer, given as PID FD NAME")
    if args.tag_pid <= 0 or args.tag_fd < 0:
        raise MemtrackError("tag: PID must be positive and FD not negative")
    target = tag(args.tag_pid, args.tag_fd, args.tag_name)
    print(f"pid {args.tag_pid} fd {args.tag_fd}: {target}")
    return 0
