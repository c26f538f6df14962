"""memtrack serve: a Prometheus /metrics endpoint (needs prometheus_client)."""
from __future__ import annotations

import sys
from functools import partial

from ...errors import MemtrackError
from ..common import categorizer, load_snapshot, seconds_or_zero_arg

NAME = "serve"
HELP = "serve Prometheus metrics over HTTP (/metrics); scans at most once per --min-interval"
ORDER = 20


def add_arguments(p):
    p.add_argument("--listen", default="127.0.0.1:9846", metavar="HOST:PORT",
                   help="address to listen on: HOST:PORT, [IPV6]:PORT, or PORT for 127.0.0.1 "
                        "(default 127.0.0.1:9846: this machine only); every interface only when "
                        "named: 0.0.0.0:9846 or [::]:9846")
    p.add_argument("--min-interval", type=seconds_or_zero_arg, default=10.0, metavar="SECONDS",
                   help="scan at most once per this many seconds, however many scrapers (default 10)")
    p.add_argument("--per-pid", action="store_true",
                   help="a pid label on the per-process metrics (one series per process: mind the cardinality)")
    p.add_argument("--group-by", choices=("unit", "container", "pod", "cgroup"), default=None,
                   help="also export per group of processes (a label of that name): held figures "
                        "and what the memory controller charged the group's cgroups")
    p.add_argument("--top", type=_count, default=20, metavar="N",
                   help="with --group-by: the N groups of most pss, the others summed as 'rest' (default 20)")


def snapshot_source(args):
    """What each scan calls. This machine: one refresher kept for the server's life (the bpf
    object loaded once; else procfs re-reading only processes that changed). A capture, a
    device or a saved snapshot: read again as given. The collector never calls it twice at
    once (scrapes share a scan), which the refresher needs."""
    live = not (args.root or getattr(args, "adb", None) is not None or getattr(args, "ssh", None))
    if not live:
        from ...sources import is_stream
        if is_stream(args.root):
            snap = load_snapshot(args)          # a pipe can be read once: serve what it held
            return lambda: snap
        return lambda: load_snapshot(args)
    from ...incremental import live_refresher
    refresher = live_refresher(args.backend, args.smaps)
    categorized = categorizer(args)
    return lambda: categorized(refresher.refresh())


def run(args) -> int:
    from ...views.prometheus import families, require_client
    from ...exporter import MemtrackCollector, make_server
    require_client()
    if not args.min_interval >= 0:
        raise MemtrackError("--min-interval must be 0 or more seconds")
    collector = MemtrackCollector(snapshot_source(args), args.min_interval, per_pid=args.per_pid,
                                  families=partial(families, group_by=args.group_by, top=args.top))
    server = make_server(args.listen, collector)     # bound first: a bad address costs no scan
    try:
        collector.prime()
    except BaseException:
        server.server_close()
        raise
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"memtrack: serving http://{shown}:{port}/metrics", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _count(text: str) -> int:
    import argparse
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise argparse.ArgumentTypeError(f"not a count of groups: {text!r}")
    return int(text)
