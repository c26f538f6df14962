"""A real dma-buf where a GPU is: CUDA memory exported with cuMemGetHandleForAddressRange,
held by a child process (the tag and capture-script tests use it)."""
import contextlib
import ctypes
import subprocess
import sys
import textwrap

import pytest

EXPORTER = textwrap.dedent("""
    import ctypes, os, sys
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        print("SKIP no libcuda:", exc, flush=True); sys.exit(0)
    def ok(res, what):
        if res != 0:
            print(f"SKIP {what} failed: CUDA error {res}", flush=True); sys.exit(0)
    ok(cuda.cuInit(0), "cuInit")
    dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    ok(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ok(cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate")
    size = 2 << 20
    ok(cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(size)), "cuMemAlloc")
    fd = ctypes.c_int(-1)
    # CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD = 1
    ok(cuda.cuMemGetHandleForAddressRange(ctypes.byref(fd), ptr, ctypes.c_size_t(size), 1,
                                          ctypes.c_ulonglong(0)), "dma-buf export")
    print("OK", fd.value, flush=True)
    sys.stdin.read()
""")


def cuda_present():
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def cuda_dmabuf_holder():
    """(process, fd): a child holding 2 MiB of CUDA memory exported as a dma-buf; the test
    is skipped where CUDA can't export one."""
    if not cuda_present():
        pytest.skip("no CUDA driver (libcuda.so.1) on this machine")
    holder = subprocess.Popen([sys.executable, "-c", EXPORTER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline().split()
        if not line or line[0] == "SKIP":
            pytest.skip(" ".join(line[1:]) or "the CUDA exporter died")
        yield holder, int(line[1])
    finally:
        holder.stdin.close()
        holder.wait()
