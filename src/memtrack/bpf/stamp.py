"""The stamp next to the shipped BPF object: which source it was built from.

clang output is not byte-reproducible across versions, so CI cannot compare a rebuild with
the shipped object byte for byte; instead the build records the hash of the source files and
of the object it made, and CI checks both still match (the source was not edited without a
rebuild, the object was not replaced by hand). Run as a script: `stamp.py write|check`.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("memtrack.bpf.c", "core.h")
OBJECT = os.path.join(HERE, "..", "data", "memtrack.bpf.o")
STAMP = OBJECT + ".stamp"


def source_hash() -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        with open(os.path.join(HERE, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def file_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_stamp(path: str = STAMP) -> dict:
    out = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.strip().partition(" ")
            if key:
                out[key] = value
    return out


def problems(obj: str = OBJECT) -> list:
    """Why the shipped object is not current; [] when it is."""
    try:
        st = read_stamp(obj + ".stamp")
    except OSError as exc:
        return [f"no stamp: {exc}"]
    out = []
    if st.get("source-sha256") != source_hash():
        out.append("the BPF source changed since the object was built: run make -C src/memtrack/bpf")
    try:
        if st.get("object-sha256") != file_hash(obj):
            out.append("the object is not the one the stamp records")
    except OSError as exc:
        out.append(f"no object: {exc}")
    return out


def write(obj: str = OBJECT) -> None:
    try:
        clang = subprocess.run(["clang", "--version"], capture_output=True, text=True).stdout
        clang = clang.splitlines()[0] if clang else "?"
    except OSError:
        clang = "?"
    with open(obj + ".stamp", "w") as f:
        f.write(f"source-sha256 {source_hash()}\nobject-sha256 {file_hash(obj)}\nclang {clang}\n")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "check"
    if cmd == "write":
        write()
    else:
        bad = problems()
        for p in bad:
            print(f"memtrack.bpf.o: {p}", file=sys.stderr)
        sys.exit(1 if bad else 0)
