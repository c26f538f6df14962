"""Build /proc + /sys trees in the exact kernel text formats, as a directory
or a capture archive. Used where the real object can't be made on the test machine
(dma-buf, DRM) and for shapes a live test can't force (old kernels, vanished processes)."""
from __future__ import annotations

import io
import os
import tarfile
from typing import Dict, List, Optional, Tuple

SYSV_HEADER = ("       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid"
               "      atime      dtime      ctime                   rss                  swap\n")


def fdinfo_generic(ino: Optional[int], flags: str = "02000002", mnt_id: int = 12) -> str:
    s = f"pos:\t0\nflags:\t{flags}\nmnt_id:\t{mnt_id}\n"
    if ino is not None:
        s += f"ino:\t{ino}\n"
    return s


def fdinfo_dmabuf(ino: Optional[int], size: int, exporter: str, count: int = 1,
                  name: Optional[str] = None) -> str:
    s = fdinfo_generic(ino) + f"size:\t{size}\ncount:\t{count}\nexp_name:\t{exporter}\n"
    if name is not None:
        s += f"name:\t{name}\n"
    return s


def maps_line(start: int, end: int, perms: str, offset: int, dev: str, ino: int, path: str = "") -> str:
    head = "%08x-%08x %s %08x %s %d " % (start, end, perms, offset, dev, ino)
    if path:
        head = head.ljust(73) + path
    return head + "\n"


def smaps_entry(start: int, end: int, perms: str, offset: int, dev: str, ino: int, path: str,
                rss_kb: int, flags: str = "rd wr sh mr mw me ms") -> str:
    size_kb = (end - start) // 1024
    body = maps_line(start, end, perms, offset, dev, ino, path)
    for key, val in (("Size", size_kb), ("KernelPageSize", 4), ("MMUPageSize", 4), ("Rss", rss_kb),
                     ("Pss", rss_kb), ("Shared_Clean", 0), ("Shared_Dirty", 0), ("Private_Clean", 0),
                     ("Private_Dirty", rss_kb), ("Referenced", rss_kb), ("Anonymous", 0),
                     ("Swap", 0), ("SwapPss", 0), ("Locked", 0)):
        body += "%-16s%8d kB\n" % (key + ":", val)
    return body + f"VmFlags: {flags} \n"


FULL = -1      # a sidecar's block count: every byte of the file allocated


def _blocks(size: int, blocks) -> str:
    """The sidecar's sixth field, st_blocks: FULL (the size in 512-byte blocks), a count,
    or None for a capture from before the field existed (no field)."""
    if blocks is None:
        return ""
    return " %d" % ((size + 511) // 512 if blocks == FULL else blocks)


class Proc:
    def __init__(self, pid: int, comm: str, cmdline: str, uid: int):
        self.pid, self.comm, self.cmdline, self.uid = pid, comm, cmdline, uid
        self.fds: Dict[int, Tuple[str, Optional[str]]] = {}
        self.fdstat: List[str] = []
        self.mapstat: List[str] = []
        self.maps: List[str] = []
        self.smaps: List[str] = []
        self.missing: set = set()            # files left out (vanished process, ...)
        self.unreadable: set = set()         # files written mode 000

    def fd(self, n: int, target: str, fdinfo: Optional[str] = None):
        self.fds[n] = (target, fdinfo)
        return self

    def stat(self, n: int, dev: str, ino: int, size: int, mode: int = 0o100777, blocks=FULL):
        self.fdstat.append(f"{n} {dev} {ino} {size} {mode:o}" + _blocks(size, blocks))
        return self

    def dmabuf(self, n: int, ino: int, size: int, exporter: str = "system", name: Optional[str] = None,
               count: int = 1, with_ino: bool = True):
        return self.fd(n, "/dmabuf:" + (name or ""),
                       fdinfo_dmabuf(ino if with_ino else None, size, exporter, count, name))

    def memfd(self, n: int, name: str, ino: int, size: Optional[int] = None, dev: str = "00:01",
              blocks=FULL):
        self.fd(n, f"/memfd:{name} (deleted)", fdinfo_generic(ino, "0100002", 0))
        if size is not None:
            self.stat(n, dev, ino, size, blocks=blocks)
        return self

    def shm(self, n: int, name: str, ino: int, size: Optional[int] = None, dev: str = "00:1b",
            blocks=FULL):
        self.fd(n, f"/dev/shm/{name}", fdinfo_generic(ino, "02100002", 31))
        if size is not None:
            self.stat(n, dev, ino, size, blocks=blocks)
        return self

    def other_fd(self, n: int, target: str = "pipe:[1234]"):
        return self.fd(n, target, "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1234\n")

    def map(self, start: int, end: int, path: str, dev: str, ino: int, offset: int = 0,
            perms: str = "rw-s", rss_kb: Optional[int] = None, size: Optional[int] = None,
            blocks=FULL):
        self.maps.append(maps_line(start, end, perms, offset, dev, ino, path))
        self.smaps.append(smaps_entry(start, end, perms, offset, dev, ino, path, rss_kb or 0))
        if size is not None:
            self.mapstat.append("%x-%x %s %d %d 100777" % (start, end, dev, ino, size)
                                + _blocks(size, blocks))
        return self

    def private_map(self, start: int, end: int, path: str = "/usr/bin/app", ino: int = 999):
        self.maps.append(maps_line(start, end, "r-xp", 0, "fe:00", ino, path))
        self.smaps.append(smaps_entry(start, end, "r-xp", 0, "fe:00", ino, path, 4, "rd ex mr mw me"))
        return self

    def files(self) -> Dict[str, bytes]:
        base = f"proc/{self.pid}"
        status = (f"Name:\t{self.comm}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{self.pid}\n"
                  f"Ngid:\t0\nPid:\t{self.pid}\nPPid:\t1\nTracerPid:\t0\n"
                  f"Uid:\t{self.uid}\t{self.uid}\t{self.uid}\t{self.uid}\n"
                  f"Gid:\t{self.uid}\t{self.uid}\t{self.uid}\t{self.uid}\nFDSize:\t64\n")
        out = {
            f"{base}/comm": (self.comm + "\n").encode(),
            f"{base}/cmdline": self.cmdline.replace(" ", "\0").encode() + b"\0",
            f"{base}/status": status.encode(),
            f"{base}/maps": "".join(self.maps).encode(),
            f"{base}/smaps": "".join(self.smaps).encode(),
        }
        for n, (_target, info) in self.fds.items():
            if info is not None:
                out[f"{base}/fdinfo/{n}"] = info.encode()
        if self.fdstat:
            out[f"{base}/fdstat"] = ("\n".join(self.fdstat) + "\n").encode()
        if self.mapstat:
            out[f"{base}/mapstat"] = ("\n".join(self.mapstat) + "\n").encode()
        return {k: v for k, v in out.items() if k[len(base) + 1:] not in self.missing}

    def links(self) -> Dict[str, str]:
        return {f"proc/{self.pid}/fd/{n}": t for n, (t, _) in self.fds.items()}


class Tree:
    def __init__(self):
        self.procs: Dict[int, Proc] = {}
        self.globals: Dict[str, bytes] = {}

    def proc(self, pid: int, comm: str = "app", cmdline: Optional[str] = None, uid: int = 0) -> Proc:
        p = self.procs[pid] = Proc(pid, comm, cmdline if cmdline is not None else comm, uid)
        return p

    def sysv(self, rows: List[dict]):
        text = SYSV_HEADER
        for r in rows:
            text += ("%10d %10d  %4o %21d %5d %5d  %5d %5d %5d %5d %5d %10d %10d %10d %21d %21d\n" % (
                r.get("key", 0), r["shmid"], r.get("perms", 0o600), r["size"], r.get("cpid", 1),
                r.get("lpid", 1), r["nattch"], 0, 0, 0, 0, 0, 0, 0, r.get("rss", 0), 0))
        self.globals["proc/sysvipc/shm"] = text.encode()
        return self

    def bufinfo(self, rows: List[dict], with_ino: bool = True):
        text = "\nDma-buf Objects:\nsize    \tflags   \tmode    \tcount   \texp_name\tino     \tname\n"
        total = 0
        for r in rows:
            total += r["size"]
            if with_ino:
                text += "%08d\t%08x\t%08x\t%08d\t%s\t%08d\t%s\n" % (
                    r["size"], 2, 0x2080007, r.get("count", 1), r["exporter"], r["ino"], r.get("name") or "<none>")
            else:
                text += "%08d\t%08x\t%08x\t%08d\t%s\n" % (r["size"], 2, 0x2080007, r.get("count", 1), r["exporter"])
            text += "\tAttached Devices:\n"
            for dev in r.get("attached", ()):
                text += f"\t{dev}\n"
            text += f"Total {len(r.get('attached', ()))} devices attached\n\n"
        text += f"\nTotal {len(rows)} objects, {total} bytes\n"
        self.globals["sys/kernel/debug/dma_buf/bufinfo"] = text.encode()
        return self

    def sysfs_buffer(self, ino: int, size: int, exporter: str):
        self.globals[f"sys/kernel/dmabuf/buffers/{ino}/size"] = f"{size}\n".encode()
        self.globals[f"sys/kernel/dmabuf/buffers/{ino}/exporter_name"] = f"{exporter}\n".encode()
        return self

    def _all(self):
        files = dict(self.globals)
        links = {}
        for p in self.procs.values():
            files.update(p.files())
            links.update(p.links())
        return files, links

    def write_dir(self, root: str) -> str:
        files, links = self._all()
        os.makedirs(os.path.join(root, "proc"), exist_ok=True)
        for rel, data in files.items():
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        for rel, target in links.items():
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(target, path)
        for p in self.procs.values():
            for rel in p.unreadable:
                os.chmod(os.path.join(root, f"proc/{p.pid}", rel), 0)
        return root

    def write_tar(self, path: str) -> str:
        files, links = self._all()
        with tarfile.open(path, "w:gz") as tf:
            for rel in sorted(files):
                ti = tarfile.TarInfo(rel)
                ti.size = len(files[rel])
                tf.addfile(ti, io.BytesIO(files[rel]))
            for rel in sorted(links):
                ti = tarfile.TarInfo(rel)
                ti.type, ti.linkname = tarfile.SYMTYPE, links[rel]
                tf.addfile(ti)
        return path
