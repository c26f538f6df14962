"""The Prometheus exporter behind `memtrack serve`: scans at most once per min_interval,
and scrapes that arrive while a scan runs wait for that scan instead of starting their own
(single flight), so fifty scrapers cost one scan. The HTTP side is one event loop that
reads requests and writes answers, and a few threads that render them: idle, slow or
numerous clients cost a bounded number of fds and threads and never hold up a scrape."""
from __future__ import annotations

import collections
import errno
import queue
import re
import selectors
import socket
import sys
import threading
import time
from typing import Callable, List, Optional, Tuple

from .errors import MemtrackError
from .util.text import printable


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
    """A prometheus_client collector whose families come from a SingleFlight of scans.
    families(snap, per_pid=, scan_seconds=) makes the metrics (views.prometheus.families):
    the caller hands it in, so this server does not depend on the views."""

    def __init__(self, scan: Callable[[], object], min_interval: float, per_pid: bool = False,
                 log=sys.stderr, *, families: Callable[..., List]):
        self._scan = scan
        self._make_families = families
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
        t0 = time.monotonic()
        try:
            snap = self._scan()
        except Exception as exc:           # a server keeps serving: say so once, report up=0
            # a message may quote a process's name
            msg = printable(str(exc) if isinstance(exc, MemtrackError) else f"{type(exc).__name__}: {exc}")
            if msg != self._last_error and not self._quiet:
                print(f"memtrack: scan failed: {msg}", file=self.log, flush=True)
            self._last_error = msg
            return [], False
        self._last_error = None
        return self._make_families(snap, per_pid=self.per_pid, scan_seconds=time.monotonic() - t0), True

    def describe(self):
        return []                          # keeps registration from scanning

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        fams, ok = self.flight.get()
        yield GaugeMetricFamily("memtrack_up", "1 if the last scan succeeded", value=1 if ok else 0)
        yield from fams
        yield CounterMetricFamily("memtrack_scans", "Scans run since the server started",
                                  value=self.flight.runs)


_PORT = re.compile(r"[0-9]{1,5}")


def parse_listen(text: str) -> Tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or PORT (127.0.0.1). Every interface only when the address
    says so (0.0.0.0:PORT, [::]:PORT): a bare :PORT is refused, not taken as every interface."""
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
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise MemtrackError(f"--listen {text!r}: the port must be a number from 0 to 65535")
    if not host:
        raise MemtrackError(f"--listen {text!r}: name the address: 127.0.0.1:{int(port)} for this "
                            f"machine, 0.0.0.0:{int(port)} or [::]:{int(port)} for every interface")
    if not (host.isascii() and host.isprintable()) or " " in host:
        raise MemtrackError(f"--listen {text!r}: not a host name or address")
    return host, int(port)


def max_connections() -> int:
    """Half the fds this process may open, at most 512: the other half is for the scans (and
    the exporter never needs more, a scrape takes milliseconds)."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 512
    if soft < 0:                           # RLIM_INFINITY
        return 512
    return max(8, min(512, soft // 2))


class _Conn:
    """One client: what it sent and nobody parsed yet, what is left of its answer."""

    __slots__ = ("sock", "buf", "out", "keep", "deadline", "served", "closed")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.out = memoryview(b"")
        self.keep = False
        self.deadline = 0.0
        self.served = 0
        self.closed = False


_REASONS = {400: "Bad Request", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            505: "HTTP Version Not Supported"}


def _answer(status: str, headers, body: bytes, keep: bool, head_only: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in ("content-length", "connection")]
    lines += [f"Content-Length: {len(body)}", "Connection: " + ("keep-alive" if keep else "close"), "", ""]
    return "\r\n".join(lines).encode("latin-1", "replace") + (b"" if head_only else body)


def _error(code: int) -> bytes:
    return _answer(f"{code} {_REASONS[code]}", [("Content-Type", "text/plain")],
                   f"{code} {_REASONS[code]}\n".encode(), keep=False)


class MetricsServer:
    """HTTP/1.1 for a WSGI app, hardened for an exporter that runs for months on any network.

    One thread (serve_forever's) accepts, reads request heads and writes answers, all
    non-blocking; `workers` threads only call the app. A request head must arrive whole within
    `timeout` seconds of the connection (or of its previous answer): a deadline, so a client
    sending a byte a second is closed as surely as a silent one; an answer must be taken within
    `timeout` too. At most `max_conns` connections: past that a new one takes the place of the
    oldest that has not sent a request yet, so idle clients cannot lock out a scraper, and fds
    never run out. accept() failing for want of fds closes such an idle connection or pauses
    accepting for a moment: the listening socket stays readable then, and retrying at once
    would spin."""

    timeout = 10.0
    workers = 4
    max_requests = 100                     # per connection, then it is closed
    head_limit = 8192
    pause = 0.25                           # accepting stops this long when fds run out

    def __init__(self, sock: socket.socket, app, max_conns: int):
        self.socket = sock
        self.server_address = sock.getsockname()
        self.app = app
        self.max_conns = max_conns
        sock.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(sock, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._listening = True
        self._paused_until: Optional[float] = None
        self._conns = set()
        # connections waiting for a request head, and answers being written, oldest first:
        # one timeout for all, so each is also in deadline order
        self._reading: "collections.OrderedDict[_Conn, None]" = collections.OrderedDict()
        self._writing: "collections.OrderedDict[_Conn, None]" = collections.OrderedDict()
        self._jobs: "queue.Queue" = queue.Queue()
        self._done: "queue.Queue" = queue.Queue()
        self._stop = False

    # the loop

    def serve_forever(self) -> None:
        threads = [threading.Thread(target=self._work, name=f"memtrack-http-{i}", daemon=True)
                   for i in range(self.workers)]
        for t in threads:
            t.start()
        try:
            while not self._stop:
                now = time.monotonic()
                self._expire(now)
                for key, events in self._sel.select(self._wait(now)):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._finish()
                    elif not key.data.closed:
                        if events & selectors.EVENT_READ:
                            self._read(key.data)
                        elif events & selectors.EVENT_WRITE:
                            self._send(key.data)
        finally:
            for _ in threads:
                self._jobs.put(None)

    def shutdown(self) -> None:
        """Ends serve_forever (from another thread)."""
        self._stop = True
        self._wake()

    def server_close(self) -> None:
        for conn in list(self._conns):
            self._close(conn)
        self._sel.close()
        for s in (self.socket, self._wake_r, self._wake_w):
            s.close()

    def _wait(self, now: float) -> Optional[float]:
        ends = [next(iter(d)).deadline for d in (self._reading, self._writing) if d]
        if self._paused_until is not None:
            ends.append(self._paused_until)
        return max(0.0, min(ends) - now) if ends else None

    def _expire(self, now: float) -> None:
        for d in (self._reading, self._writing):
            while d:
                conn = next(iter(d))
                if conn.deadline > now:
                    break
                self._close(conn)
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            self._sel.register(self.socket, selectors.EVENT_READ, "accept")

    # connections

    def _accept(self) -> None:
        for _ in range(64):                # a burst at a time: reads and answers go on meanwhile
            try:
                sock, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) and self._evict():
                    continue
                self._sel.unregister(self.socket)
                self._paused_until = time.monotonic() + self.pause
                return
            if len(self._conns) >= self.max_conns and not self._evict():
                sock.close()               # every connection is in a request: refuse this one
                continue
            sock.setblocking(False)
            conn = _Conn(sock)
            self._conns.add(conn)
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self._to_reading(conn)

    def _evict(self) -> bool:
        """Closes the oldest connection that has not sent a (whole) request."""
        if not self._reading:
            return False
        self._close(next(iter(self._reading)))
        return True

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        self._reading.pop(conn, None)
        self._writing.pop(conn, None)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass                           # busy: not registered while a worker has it
        conn.sock.close()

    def _to_reading(self, conn: _Conn) -> None:
        conn.deadline = time.monotonic() + self.timeout
        self._reading[conn] = None

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.buf += data
        self._take(conn)

    def _take(self, conn: _Conn) -> None:
        """A whole request head in conn.buf goes to a worker; a bad or too long one is answered."""
        buf = conn.buf
        end = buf.find(b"\r\n\r\n", 0, self.head_limit)
        n = 4
        if end < 0:
            end, n = buf.find(b"\n\n", 0, self.head_limit), 2
        if end < 0:
            if len(buf) >= self.head_limit:
                self._reply(conn, _error(431), keep=False)
            return
        head, conn.buf = buf[:end], buf[end + n:]
        request = self._parse(head.decode("latin-1"))
        if isinstance(request, int):
            self._reply(conn, _error(request), keep=False)
            return
        method, target, version, headers = request
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            keep = False                   # a body this server does not read: no next request
        conn.served += 1
        conn.keep = keep and conn.served < self.max_requests
        self._reading.pop(conn, None)
        self._sel.unregister(conn.sock)
        self._jobs.put((conn, method, target, version, headers))

    @staticmethod
    def _parse(head: str):
        lines = head.split("\n")
        parts = lines[0].rstrip("\r").split(" ")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            return 400
        method, target, version = parts
        if not re.fullmatch(r"HTTP/[0-9]\.[0-9]", version):
            return 400
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            return 505
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.rstrip("\r").partition(":")
            if not sep or not name or name != name.strip():
                return 400
            headers[name.lower()] = value.strip()
        return method, target, version, headers

    def _reply(self, conn: _Conn, data: bytes, keep: bool) -> None:
        conn.out, conn.keep = memoryview(data), keep
        self._reading.pop(conn, None)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self._sel.register(conn.sock, selectors.EVENT_WRITE, conn)
        conn.deadline = time.monotonic() + self.timeout
        self._writing[conn] = None
        self._send(conn)

    def _send(self, conn: _Conn) -> None:
        try:
            n = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[n:]
        if conn.out:
            return
        if not conn.keep:
            self._close(conn)
            return
        del self._writing[conn]
        self._sel.modify(conn.sock, selectors.EVENT_READ, conn)
        self._to_reading(conn)
        if conn.buf:
            self._take(conn)               # a pipelined request, already read

    # the workers

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass                           # full: the loop has wake-ups enough to read

    def _finish(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while True:
            try:
                conn, data = self._done.get_nowait()
            except queue.Empty:
                return
            if not conn.closed:
                self._reply(conn, data, conn.keep)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn = job[0]
            try:
                data = self._call(*job[1:], keep=conn.keep)
            except Exception:              # noqa: BLE001 - the client gets a 500, the server stays
                conn.keep = False
                data = _error(500)
            self._done.put((conn, data))
            self._wake()

    def _call(self, method, target, version, headers, keep) -> bytes:
        from urllib.parse import unquote, urlsplit
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            path, query = parts.path or "/", parts.query
        else:
            path, _, query = target.partition("?")
        environ = {"REQUEST_METHOD": "GET" if method == "HEAD" else method, "PATH_INFO": unquote(path),
                   "QUERY_STRING": query, "SERVER_PROTOCOL": version, "wsgi.url_scheme": "http"}
        for name in ("accept", "accept-encoding"):
            if name in headers:
                environ["HTTP_" + name.upper().replace("-", "_")] = headers[name]
        got = []
        body = b"".join(self.app(environ, lambda status, hdrs, exc_info=None: got.append((status, hdrs))))
        status, hdrs = got[0]
        return _answer(status, hdrs, body, keep, head_only=method == "HEAD")


def make_server(listen: str, collector: MemtrackCollector) -> MetricsServer:
    """The /metrics server, bound (so errors show before serving)."""
    from prometheus_client import CollectorRegistry, make_wsgi_app

    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise MemtrackError(f"--listen {listen!r}: {getattr(exc, 'strerror', None) or exc}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)                  # a burst of connections waits here, costing no fd
    except OSError as exc:
        sock.close()
        raise MemtrackError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    return MetricsServer(sock, make_wsgi_app(registry), max_connections())
