#!/usr/bin/env python3
"""Coverage-guided fuzzing of the capture-archive reader (atheris + libFuzzer).

Each input is one archive: its first byte picks how the rest is fed to memtrack (plain tar,
gzip-compressed on the fly so the tar layer is fuzzed through the gzip path too, or the bytes
as they are, so the decompressors see garbage). The reader must return a snapshot or raise
SourceError: anything else is a crash. A snapshot read must then account with the pss
invariant and survive JSON -> Snapshot unchanged.

  pip install atheris
  python3 fuzz/fuzz_archive.py -dict=fuzz/archive.dict -max_total_time=600 -timeout=10 \
      -rss_limit_mb=1024 /tmp/corpus                                 # a long run
  python3 fuzz/fuzz_archive.py -dict=fuzz/archive.dict -runs=2000 /tmp/corpus   # CI's size

The corpus folder is seeded with small valid captures (kernel-format fixtures and the real
H100 capture) when empty. Without atheris, `python3 fuzz/fuzz_archive.py --fallback N` runs N
random mutations of the seeds instead (no coverage guidance).
"""
from __future__ import annotations

import gzip
import io
import json
import os
import random
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (os.path.join(ROOT, "src"), os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

try:
    import atheris
except ImportError:          # the fallback below needs nothing
    atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["memtrack", "tarfile", "gzip"]):
        import memtrack.procfs  # noqa: F401
        import memtrack.json_in  # noqa: F401
        import memtrack.json_out  # noqa: F401
        from memtrack.sources import archive as archive_mod
else:
    from memtrack.sources import archive as archive_mod
from memtrack.account import account  # noqa: E402
from memtrack.errors import SourceError  # noqa: E402
from memtrack.json_in import from_dict  # noqa: E402
from memtrack.json_out import to_json  # noqa: E402
from memtrack.procfs import scan  # noqa: E402

# small caps, so the fuzzer reaches them with small inputs (set by main(), or by a test)
CAPS = {"MAX_MEMBER": 64 << 10, "MAX_TOTAL": 4 << 20, "MAX_STREAM": 16 << 20,
        "MAX_MEMBERS": 5000, "MAX_HEADER": 64 << 10}


def apply_caps(setattr_=setattr):
    for k, v in CAPS.items():
        setattr_(archive_mod, k, v)

_TMP = tempfile.mkdtemp(prefix="memtrack-fuzz-")
_INPUT = os.path.join(_TMP, "input")


def feed(data: bytes) -> bytes:
    """The bytes the reader sees for one fuzz input."""
    if not data:
        return b""
    mode, body = data[0] % 3, data[1:]
    if mode == 1:
        return gzip.compress(body, compresslevel=1, mtime=0)
    return body


def one_input(data: bytes) -> None:
    with open(_INPUT, "wb") as f:
        f.write(feed(data))
    try:
        src = archive_mod.ArchiveSource(_INPUT)
        snap = scan(src)
    except SourceError:
        return
    acct = account(snap)
    if acct.total.pss != acct.held_bytes:
        raise AssertionError(f"pss invariant broken: {acct.total.pss} != {acct.held_bytes}")
    text = to_json(snap).encode("utf-8", "backslashreplace").decode("utf-8")
    again = from_dict(json.loads(text))
    if again != snap:
        raise AssertionError("JSON round trip changed the snapshot")
    if sorted(os.listdir(_TMP)) != ["input"]:
        raise AssertionError(f"reading wrote files: {os.listdir(_TMP)}")


def seeds():
    """Small valid captures, each with its mode byte (0: plain tar, 2: as is)."""
    from kfixture import Tree
    out = []
    t = Tree()
    p = t.proc(10, "app")
    p.memfd(3, "pool", 100, 4096)
    p.dmabuf(4, 7, 8192, "system", name="cam")
    p.map(0x7f0000000000, 0x7f0000002000, "/dev/shm/x", "00:1b", 200, size=8192)
    p.map(0x7f0000003000, 0x7f0000004000, "/SYSV00001234 (deleted)", "00:01", 5)
    t.proc(11, "peer").memfd(4, "pool", 100, 4096)
    t.sysv([{"shmid": 5, "size": 4096, "nattch": 1}])
    t.bufinfo([{"size": 8192, "exporter": "system", "ino": 7, "name": "cam"}])
    with tempfile.TemporaryDirectory(prefix="memtrack-seed-") as d:
        gz = t.write_tar(os.path.join(d, "a.tgz"))
        raw = open(gz, "rb").read()
    out.append(b"\x02" + raw)
    out.append(b"\x00" + gzip.decompress(raw))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in (("proc/1/maps", b"7f00-7f10 rw-s 00000000 00:01 3 /memfd:a (deleted)\n"),
                           ("proc/1/fdinfo/3", b"pos:\t0\nino:\t3\n")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("proc/1/fd/3")
        ti.type, ti.linkname = tarfile.SYMTYPE, "/memfd:a (deleted)"
        tf.addfile(ti)
    out.append(b"\x00" + buf.getvalue())
    real = os.path.join(HERE, "..", "tests", "data", "h100-cuda-dmabuf.tar.gz")
    if os.path.exists(real):
        out.append(b"\x00" + gzip.decompress(open(real, "rb").read()))
    return out


def make_corpus(d: str) -> None:
    os.makedirs(d, exist_ok=True)
    if any(os.scandir(d)):
        return
    for i, s in enumerate(seeds()):
        with open(os.path.join(d, f"seed-{i}"), "wb") as f:
            f.write(s)


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[pos % len(b)] = rng.randrange(256)
        elif op == 1:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 2:
            del b[pos:pos + rng.randint(1, 600)]
        elif op == 3 and b:                        # a header field set to digits or junk
            field = rng.choice([b"9" * 11, b"77777777777", b"\xff" * 8, b"-1", b"0" * 12])
            b[pos:pos + len(field)] = field
        else:
            b = b[:pos]                             # truncate
    return bytes(b)


def fallback(runs: int, seed: int = 0) -> int:
    """Random mutations of the seeds, for machines without atheris. Returns runs done."""
    rng = random.Random(seed)
    pool = seeds()
    for _ in range(runs):
        one_input(mutate(rng.choice(pool), rng))
    return runs


def main(argv):
    apply_caps()
    if "--fallback" in argv:
        n = int(argv[argv.index("--fallback") + 1])
        print(f"fallback: {fallback(n)} runs, no crash")
        return 0
    if atheris is None:
        print("atheris is not installed (pip install atheris); use --fallback N", file=sys.stderr)
        return 2
    for a in argv[1:]:
        if not a.startswith("-"):
            make_corpus(a)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
