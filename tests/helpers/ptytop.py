"""memtrack top on a real pseudo-terminal, for the tests that drive it."""
from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

from livehelpers import SRC

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]|\r")


class PtyTop:
    def __init__(self, *args, rows=40, cols=150):
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.before = termios.tcgetattr(self.slave)
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env.update(PYTHONPATH=SRC, TERM="xterm-256color")

        def ctty():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)      # the pty is its controlling terminal
        self.p = subprocess.Popen([sys.executable, "-m", "memtrack", "top", *args],
                                  stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                  env=env, start_new_session=True, preexec_fn=ctty)
        self.raw = b""

    def pump(self, timeout=0.1):
        r, _, _ = select.select([self.master], [], [], timeout)
        if r:
            try:
                self.raw += os.read(self.master, 65536)
            except OSError:
                pass

    @property
    def text(self) -> str:
        return ANSI.sub(b"", self.raw).decode("utf-8", "replace")

    def wait_text(self, needle, timeout=30):
        end = time.monotonic() + timeout
        while needle not in self.text:
            if time.monotonic() > end:
                raise AssertionError(f"{needle!r} never appeared; got:\n{self.text[-3000:]}")
            self.pump()
        return self.text

    def wait_exit(self, timeout=30):
        end = time.monotonic() + timeout
        while self.p.poll() is None:
            if time.monotonic() > end:
                self.p.kill()
                raise AssertionError("top did not exit; got:\n" + self.text[-3000:])
            self.pump()
        for _ in range(5):
            self.pump(0.05)
        return self.p.returncode

    def send(self, data: bytes):
        os.write(self.master, data)

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        os.close(self.master)
        os.close(self.slave)

    def restored(self) -> bool:
        now = termios.tcgetattr(self.slave)
        return now[3] & (termios.ECHO | termios.ICANON) == self.before[3] & (termios.ECHO | termios.ICANON) \
            and now[3] & termios.ICANON and now[3] & termios.ECHO
