"""memtrack tag: live checks on this machine (a memfd must be refused with one clear line),
pidfd_getfd on a real child, and a real dma-buf exported from CUDA where a GPU exists."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from helpers.cuda import cuda_dmabuf_holder, cuda_present
from helpers.paths import SRC
from memtrack.errors import MemtrackError
from memtrack.tag import TagError, name_bytes, syscall_numbers, take_fd


def cli(*argv):
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-m", "memtrack", "tag"] + [str(a) for a in argv],
                          capture_output=True, text=True, env=env)


@pytest.fixture
def memfd():
    fd = os.memfd_create("memtrack-tag-test")
    os.ftruncate(fd, 4096)
    yield fd
    os.close(fd)


def test_memfd_is_refused_with_one_line(memfd):
    r = cli(os.getpid(), memfd, "camera-preview")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"memtrack: fd {memfd} of pid {os.getpid()} is not a dma-buf "
                        "(it is /memfd:memtrack-tag-test (deleted))\n")


def test_name_limits(memfd):
    r = cli(os.getpid(), memfd, "x" * 32)
    assert r.returncode == 2
    assert r.stderr == ("memtrack: name is 32 bytes: a dma-buf name holds at most 31 bytes "
                        "(DMA_BUF_NAME_LEN 32, the NUL included)\n")
    assert name_bytes("x" * 31) == b"x" * 31
    assert name_bytes("é" * 15) == "é".encode() * 15                 # 30 bytes: fits
    with pytest.raises(TagError, match="at most 31 bytes"):
        name_bytes("é" * 16)                                          # 32 bytes
    with pytest.raises(TagError, match="NUL"):
        name_bytes("a\0b")


def test_missing_fd_and_process():
    r = cli(os.getpid(), 4095, "x")
    assert r.returncode == 2 and r.stderr == f"memtrack: pid {os.getpid()} has no fd 4095\n"
    with open("/proc/sys/kernel/pid_max") as f:
        beyond = int(f.read()) + 1
    r = cli(beyond, 3, "x")
    assert r.returncode == 2 and r.stderr == f"memtrack: no process {beyond}\n"
    r = cli(0, 3, "x")
    assert r.returncode == 2 and "PID must be positive" in r.stderr
    assert issubclass(TagError, MemtrackError)


def test_syscall_numbers_per_architecture():
    assert syscall_numbers("x86_64", 8) == (434, 438)
    assert syscall_numbers("aarch64", 8) == (434, 438)
    assert syscall_numbers("armv7l", 4) == (434, 438)
    assert syscall_numbers("alpha", 8) == (544, 548)
    assert syscall_numbers("mips64", 8) == (5434, 5438)
    assert syscall_numbers("mips", 4) == (4434, 4438)


def test_take_fd_of_a_child():
    """pidfd_open + pidfd_getfd through the syscall numbers above, on a real process."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, sys
        fd = os.memfd_create("held-by-child")
        print(fd, flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        fd = int(child.stdout.readline())
        try:
            dup = take_fd(child.pid, fd)
        except TagError as exc:
            if "no rights" in str(exc) or "no pidfd" in str(exc):
                pytest.skip(f"this machine refuses pidfd_getfd: {exc}")
            raise
        try:
            assert os.readlink(f"/proc/self/fd/{dup}") == "/memfd:held-by-child (deleted)"
            assert os.fstat(dup).st_ino == os.stat(f"/proc/{child.pid}/fd/{fd}").st_ino
        finally:
            os.close(dup)
        with pytest.raises(TagError, match=f"pid {child.pid} has no fd 999"):
            take_fd(child.pid, 999)
    finally:
        child.stdin.close()
        child.wait()


# -- a real dma-buf: CUDA memory exported with cuMemGetHandleForAddressRange -------------------

@pytest.mark.skipif(not cuda_present(), reason="no CUDA driver (libcuda.so.1) on this machine")
def test_tag_a_cuda_dmabuf_from_another_process():
    from memtrack.cli import main
    from memtrack.procfs import scan
    from memtrack.sources.live import LiveSource
    with cuda_dmabuf_holder() as (holder, fd):
        assert os.readlink(f"/proc/{holder.pid}/fd/{fd}").startswith("/dmabuf:")
        # this test process is the second process: it names the holder's buffer through memtrack
        assert main(["tag", str(holder.pid), str(fd), "memtrack-cuda-test"]) == 0
        assert os.readlink(f"/proc/{holder.pid}/fd/{fd}") == "/dmabuf:memtrack-cuda-test"
        snap = scan(LiveSource(), pids=[holder.pid])
        named = [b for b in snap.buffers if b.kind == "dmabuf" and b.name == "memtrack-cuda-test"]
        assert len(named) == 1
        assert named[0].size == 2 << 20 and named[0].exporter == "nv_dmabuf"
        assert named[0].holders == (holder.pid,)
