"""Real dma-bufs for the bpf backend: export CUDA memory as dma-bufs, name them, share them
with a child, then scan with both backends and compare.

    sudo python3 tests/cuda_dmabuf_compare.py [--buffers 3]

Exit 0: identical (and iter/dmabuf lists what debugfs bufinfo lists); 1: a difference
(printed); 77: skipped (no CUDA driver, no dma-buf export support, or the bpf backend cannot
run here). Uses only ctypes on libcuda.so.1 (the CUDA driver API), no CUDA toolkit.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

SKIP = 77
DMA_BUF_SET_NAME_B = 0x40086201
CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 124
CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD = 1
BUFINFO = "/sys/kernel/debug/dma_buf/bufinfo"


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(SKIP)


class Cuda:
    def __init__(self):
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            skip(f"no CUDA driver (libcuda.so.1): {exc}")
        self.lib.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
        self.lib.cuMemGetHandleForAddressRange.argtypes = [
            ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int, ctypes.c_ulonglong]
        self.check("cuInit", self.lib.cuInit(0))
        self.dev = ctypes.c_int()
        self.check("cuDeviceGet", self.lib.cuDeviceGet(ctypes.byref(self.dev), 0))
        ok = ctypes.c_int()
        self.check("cuDeviceGetAttribute", self.lib.cuDeviceGetAttribute(
            ctypes.byref(ok), CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED, self.dev))
        if not ok.value:
            skip("this GPU/driver cannot export dma-bufs (CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED=0)")
        self.ctx = ctypes.c_void_p()
        self.check("cuDevicePrimaryCtxRetain",
                   self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), self.dev))
        self.check("cuCtxSetCurrent", self.lib.cuCtxSetCurrent(self.ctx))

    @staticmethod
    def check(what, rc):
        if rc != 0:
            skip(f"{what} failed: CUresult {rc}")

    def export(self, size):
        ptr = ctypes.c_uint64()
        self.check("cuMemAlloc", self.lib.cuMemAlloc_v2(ctypes.byref(ptr), size))
        fd = ctypes.c_int(-1)
        self.check("cuMemGetHandleForAddressRange", self.lib.cuMemGetHandleForAddressRange(
            ctypes.byref(fd), ptr.value, size, CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0))
        return fd.value


def debugfs_table():
    if not os.path.exists(BUFINFO) and os.geteuid() == 0:
        subprocess.run(["mount", "-t", "debugfs", "none", "/sys/kernel/debug"],
                       stderr=subprocess.DEVNULL)
    try:
        from memtrack.readers import debugfs
        with open(BUFINFO) as f:
            bufs, _count, _total = debugfs.parse(f.read())
    except (OSError, ValueError) as exc:
        print(f"note: debugfs bufinfo unreadable ({exc}): iter/dmabuf not cross-checked")
        return None
    return sorted((b.inode, b.size, b.exporter, b.name, b.count) for b in bufs)


def same(a, b, pids, want, label, out=None):
    """Print the bpf snapshot's dma-bufs of these pids and every difference from procfs."""
    from memtrack.json_out import to_dict
    ok = True
    mine = [x for x in b.restrict(pids=pids).buffers if x.kind == "dmabuf"]
    print(f"[{label}]")
    for x in mine:
        print(f"  {x.id} size={x.size} exporter={x.exporter} name={x.name} holders={x.holders} "
              f"fd_refs={x.fd_refs} kernel_count={x.kernel_count}")
    if len(mine) != want or any(x.holders != tuple(sorted(pids)) for x in mine):
        print(f"FAIL [{label}]: the exported buffers are not all seen, held by parent and child")
        ok = False
    da, db = (to_dict(x.restrict(pids=pids)) for x in (a, b))
    for key in ("buffers", "processes", "totals"):
        if da[key] != db[key]:
            print(f"FAIL [{label}]: {key} differ:\n procfs {json.dumps(da[key])}\n"
                  f" bpf    {json.dumps(db[key])}")
            ok = False
    if out:
        for name, d in (("procfs", da), ("bpf", db)):
            with open(os.path.join(out, f"{label}-{name}.json"), "w") as f:
                json.dump(d, f, indent=1, sort_keys=True)
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--buffers", type=int, default=3)
    ap.add_argument("--out", help="write each round's two snapshots (these pids) as JSON here")
    args = ap.parse_args()
    from memtrack import bpf as mbpf
    why = mbpf.unavailable()
    if why:
        skip(f"bpf backend cannot run: {why}")
    cuda = Cuda()
    fds = []
    for i in range(args.buffers):
        fd = cuda.export((i + 1) * 2 << 20)
        if i < args.buffers - 1:           # the last one stays unnamed
            fcntl.ioctl(fd, DMA_BUF_SET_NAME_B, b"memtrack-cuda-%d\0" % i)
        fds.append(fd)
    fds.append(os.dup(fds[0]))            # two fds, one buffer
    r, w = os.pipe()
    child = os.fork()
    if child == 0:                        # holds every fd; never touches CUDA
        os.close(r)
        os.close(w)
        signal.pause()
        os._exit(0)
    os.close(w)
    try:
        from memtrack.procfs import scan
        from memtrack.sources.live import LiveSource
        pids = {os.getpid(), child}
        kernel = debugfs_table()
        with mbpf.BpfScanner() as s:           # reused across the two rounds, as in top/serve
            a = scan(LiveSource())
            b = s.scan()
            iter_table = sorted((k.inode, k.size, k.exporter, k.name, k.count)
                                for k in s.collect().kernel if k.kind == "dmabuf")
            print(f"procfs: dma-buf table from {a.kernel.dmabuf_source}, "
                  f"{a.kernel.dmabuf_exported_count} buffers, {a.kernel.dmabuf_exported_bytes} bytes")
            print(f"bpf:    dma-buf table from {b.kernel.dmabuf_source}, "
                  f"{b.kernel.dmabuf_exported_count} buffers, {b.kernel.dmabuf_exported_bytes} bytes")
            ok = same(a, b, pids, args.buffers, "fresh", args.out)
            if kernel is not None:
                print(f"debugfs bufinfo: {kernel}\niter/dmabuf:     {iter_table}")
                if b.kernel.dmabuf_source == "dmabuf_iter" and kernel != iter_table:
                    print("FAIL: iter/dmabuf and debugfs bufinfo differ")
                    ok = False
            # Round two, through the reused scanner: rename a buffer every holder shares and
            # close the parent's second fd; the refresh must see both, like a fresh procfs scan.
            renamed = True
            try:
                fcntl.ioctl(fds[0], DMA_BUF_SET_NAME_B, b"memtrack-cuda-renamed\0")
            except OSError as exc:
                print(f"note: a second DMA_BUF_SET_NAME was refused ({exc}); no rename checked")
                renamed = False
            os.close(fds.pop())
            b2 = s.scan()
            a2 = scan(LiveSource())
            ok = same(a2, b2, pids, args.buffers, "reused", args.out) and ok
            if renamed and not any(x.name == "memtrack-cuda-renamed"
                                   for x in b2.restrict(pids=pids).buffers):
                print("FAIL: the reused bpf scanner missed the rename")
                ok = False
        print("IDENTICAL" if ok else "DIFFERENT")
        return 0 if ok else 1
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


if __name__ == "__main__":
    sys.exit(main())
