"""The Prometheus exporter behind `memtrack serve`: scans at most once per min_interval,
and scrapes that arrive while a scan runs wait for that scan instead of starting their own
(single flight), so fifty scrapers cost one scan."""
from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Callable, List, Optional, Tuple

from .errors import MemtrackError


class SingleFlight:
    """get() returns the value of produce(): the cached one while younger than min_interval,
    else a fresh one; callers arriving during a produce() share its result."""

    def __init__(self, produce: Callable[[], object], min_interval: float,
                 clock: Callable[[], float] = time.monotonic):
        self._produce = produce
        self.min_interval = min_interval
        self._clock = clock
        self._cond = threading.Condition()
        self._busy = False
        self._gen = 0
        self._value = None
        self._at: Optional[float] = None
        self.runs = 0
        self.waiting = 0                   # callers now waiting on a run in flight

    def get(self):
        with self._cond:
            if self._busy:
                gen = self._gen
                self.waiting += 1
                try:
                    while self._gen == gen:
                        self._cond.wait()
                finally:
                    self.waiting -= 1
                return self._value
            if self._at is not None and self._clock() - self._at < self.min_interval:
                return self._value
            self._busy = True
        value = None
        try:
            value = self._produce()
        finally:
            with self._cond:
                self._value, self._at = value, self._clock()
                self._busy = False
                self._gen += 1
                self.runs += 1
                self._cond.notify_all()
        return value


class MemtrackCollector:
    """A prometheus_client collector whose families come from a SingleFlight of scans."""

    def __init__(self, scan: Callable[[], object], min_interval: float, per_pid: bool = False,
                 log=sys.stderr):
        self._scan = scan
        self.per_pid = per_pid
        self.log = log
        self.flight = SingleFlight(self._families, min_interval)
        self._last_error: Optional[str] = None
        self._quiet = False

    def prime(self) -> None:
        """The first scan, before listening: a source that cannot be read at all (a missing
        --root, no adb) is a usage error, not a server that only ever says up 0."""
        self._quiet = True
        try:
            _, ok = self.flight.get()
        finally:
            self._quiet = False
        if not ok:
            raise MemtrackError(self._last_error or "the first scan failed")

    def _families(self) -> Tuple[List, bool]:
        from .views.prometheus import families
        t0 = time.monotonic()
        try:
            snap = self._scan()
        except Exception as exc:           # a server keeps serving: say so once, report up=0
            from .views.table import printable     # a message may quote a process's name
            msg = printable(str(exc) if isinstance(exc, MemtrackError) else f"{type(exc).__name__}: {exc}")
            if msg != self._last_error and not self._quiet:
                print(f"memtrack: scan failed: {msg}", file=self.log, flush=True)
            self._last_error = msg
            return [], False
        self._last_error = None
        return families(snap, per_pid=self.per_pid, scan_seconds=time.monotonic() - t0), True

    def describe(self):
        return []                          # keeps registration from scanning

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        fams, ok = self.flight.get()
        yield GaugeMetricFamily("memtrack_up", "1 if the last scan succeeded", value=1 if ok else 0)
        yield from fams
        yield CounterMetricFamily("memtrack_scans", "Scans run since the server started",
                                  value=self.flight.runs)


def parse_listen(text: str) -> Tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT, :PORT (every interface) or PORT (localhost)."""
    t = text.strip()
    if t.startswith("["):
        host, sep, port = t[1:].partition("]:")
        if not sep:
            raise MemtrackError(f"--listen {text!r}: want [ADDRESS]:PORT for IPv6")
    elif ":" in t:
        host, _, port = t.rpartition(":")
        if ":" in host:
            raise MemtrackError(f"--listen {text!r}: put an IPv6 address in brackets: [::1]:9846")
    else:
        host, port = "127.0.0.1", t
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise MemtrackError(f"--listen {text!r}: the port must be a number from 0 to 65535")
    return host, int(port)


def make_server(listen: str, collector: MemtrackCollector):
    """A threading HTTP server for /metrics, bound (so errors show before serving)."""
    from http.server import ThreadingHTTPServer
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import MetricsHandler

    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise MemtrackError(f"--listen {listen!r}: {exc.strerror}") from None
    family = infos[0][0]

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True
        request_queue_size = 128

    try:
        server = Server((host, port), MetricsHandler.factory(registry))
    except OSError as exc:
        raise MemtrackError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    return server
