"""Property-based tests (hypothesis) for every parser of kernel text and for the JSON
snapshot: arbitrary input never raises anything but the documented error, every number that
comes out is one a kernel could print, and text in the kernel's own format parses back
exactly. Valid snapshots survive Snapshot -> JSON -> Snapshot unchanged, with the pss
invariant.

Short in CI; a long run: MEMTRACK_FUZZ=long python3 -m pytest tests/test_fuzz_parsers.py
(or MEMTRACK_FUZZ_EXAMPLES=N for any count)."""
from __future__ import annotations

import importlib
import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import example, given, strategies as st  # noqa: E402

from memtrack.account import account  # noqa: E402
from memtrack.errors import MemtrackError, SourceError  # noqa: E402
from memtrack.model import KINDS  # noqa: E402
from memtrack.readers import debugfs, sysv  # noqa: E402
from memtrack.readers.fd import classify, fdinfo_int, parse_fdinfo  # noqa: E402
from memtrack.readers.maps import parse_shared  # noqa: E402
from memtrack.readers.num import u64  # noqa: E402
from memtrack.readers.proc import parse_cmdline, parse_status  # noqa: E402
from memtrack.readers.smaps import parse_rss  # noqa: E402
from memtrack.sources.base import is_number, parse_statfile  # noqa: E402
from memtrack.json_out import to_json  # noqa: E402
from memtrack.json_in import from_dict  # noqa: E402
from kfixture import SYSV_HEADER, Tree, maps_line  # noqa: E402
from helpers.strategies import CHARS, FUZZ, U64, snapshots  # noqa: E402

TEXT = st.text(CHARS, max_size=400)
# kernel-ish text: lines of key/value or columns with digits, so parsers get past their
# first checks and meet odd numbers
NUMS = st.one_of(st.integers(-10, 10), st.integers(0, U64 + 10), st.integers(-(1 << 70), 1 << 70),
                 st.just(10 ** 40)).map(str)
TOKEN = st.one_of(NUMS, st.text("0123456789abcdefx-:/ \t", max_size=30), TEXT.map(lambda s: s[:20]))
LINE = st.lists(TOKEN, max_size=8).map(" ".join)
LINES = st.lists(st.one_of(LINE, TEXT.map(lambda s: s[:60])), max_size=20).map("\n".join)
ANY_TEXT = st.one_of(TEXT, LINES)
ANY_BYTES = st.one_of(st.binary(max_size=600), LINES.map(lambda s: s.encode("utf-8", "surrogateescape")))


def in_u64(*ns):
    return all(n is None or (isinstance(n, int) and 0 <= n < U64) for n in ns)


# -- numbers -------------------------------------------------------------------------------

@FUZZ
@given(TOKEN, st.sampled_from([8, 10, 16]))
def test_u64_accepts_only_kernel_numbers(text, base):
    try:
        n = u64(text, base)
    except ValueError:
        return
    assert 0 <= n < U64 and int(text, base) == n


@FUZZ
@given(st.integers(0, U64 - 1))
def test_u64_round_trip(n):
    assert u64(str(n)) == n and u64("%x" % n, 16) == n


# -- fd links and fdinfo -------------------------------------------------------------------

@FUZZ
@given(ANY_TEXT)
def test_fdinfo_any_text(text):
    info = parse_fdinfo(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in info.items())
    for key in list(info) + ["ino", "size", "count"]:
        assert in_u64(fdinfo_int(info, key))


@FUZZ
@given(st.integers(0, U64 - 1), st.integers(0, U64 - 1), st.integers(0, U64 - 1),
       st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=32),
       st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=16))
def test_fdinfo_dmabuf_format_parses_back(ino, size, count, name, exporter):
    from kfixture import fdinfo_dmabuf
    name = name.strip()
    info = parse_fdinfo(fdinfo_dmabuf(ino, size, exporter, count, name or None))
    assert (fdinfo_int(info, "ino"), fdinfo_int(info, "size"), fdinfo_int(info, "count")) == (ino, size, count)
    assert info["exp_name"] == exporter and info.get("name", "") == name


@FUZZ
@given(ANY_TEXT)
def test_classify_any_link(target):
    for got in (classify(target),):
        assert got is None or (got[0] in KINDS and (got[1] is None or isinstance(got[1], str)))


# -- maps, smaps ---------------------------------------------------------------------------

@FUZZ
@given(ANY_BYTES)
def test_maps_any_bytes(data):
    bad = []
    for start, end, off, dev, ino, kind, name in parse_shared(data, bad):
        assert in_u64(start, end, off, ino) and start <= end and kind in KINDS
        assert isinstance(dev, str)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, U64 - 1), st.integers(0, U64 - 1), st.integers(0, U64 - 1),
                          st.integers(0, 255), st.integers(0, 255), st.integers(0, U64 - 1),
                          st.sampled_from(["/memfd:a b (deleted)", "/dev/shm/x y", "/dev/zero (deleted)",
                                           "/dmabuf:", "/SYSV0000abcd (deleted)", "/dev/ashmem/z (deleted)"])),
                max_size=6))
def test_maps_kernel_format_parses_back(rows):
    text = ""
    want = []
    for a, b, off, major, minor, ino, path in rows:
        start, end = min(a, b), max(a, b)
        text += maps_line(start, end, "rw-s", off, "%02x:%02x" % (major, minor), ino, path)
        text += maps_line(start, end, "rw-p", off, "00:00", 0, "/usr/lib/x.so")
        want.append((start, end, off, "%02x:%02x" % (major, minor), ino, classify(path)[0]))
    got = [r[:6] for r in parse_shared(text.encode())]
    assert got == want


@FUZZ
@given(ANY_BYTES)
def test_smaps_any_bytes(data):
    for start, rss in parse_rss(data).items():
        assert in_u64(start) and rss >= 0 and rss % 1024 == 0


# -- kernel tables -------------------------------------------------------------------------

@FUZZ
@given(ANY_TEXT, st.booleans())
def test_bufinfo_any_text(text, with_header):
    if with_header:
        text = "\nDma-buf Objects:\n" + text
    try:
        bufs, count, total = debugfs.parse(text)
    except ValueError:
        assert "Dma-buf Objects:" not in text
        return
    assert in_u64(count, total)
    for b in bufs:
        assert b.kind == "dmabuf" and in_u64(b.inode, b.size, b.count)


@FUZZ
@given(st.lists(st.fixed_dictionaries({
    "size": st.integers(0, 10 ** 12), "ino": st.integers(0, 10 ** 12), "count": st.integers(0, 10 ** 6),
    "exporter": st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12),
    # (a buffer named "<none>" reads as one without a name: the kernel prints that for both)
    "name": st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Zs")),
                                         min_size=1, max_size=32).filter(lambda n: n != "<none>")),
    "attached": st.lists(st.sampled_from(["0000:04:00.0", "ff1c0000.gpu"]), max_size=2)}), max_size=6))
def test_bufinfo_kernel_format_parses_back(rows):
    t = Tree().bufinfo(rows)
    bufs, count, total = debugfs.parse(t.globals["sys/kernel/debug/dma_buf/bufinfo"].decode())
    assert [(b.size, b.inode, b.count, b.exporter, b.name) for b in bufs] == \
        [(r["size"], r["ino"], r["count"], r["exporter"], r["name"]) for r in rows]
    assert count == len(rows) and total == sum(r["size"] for r in rows)


@FUZZ
@given(ANY_TEXT, st.booleans())
def test_sysvipc_any_text(text, with_header):
    if with_header:
        text = SYSV_HEADER + text
    try:
        segs = sysv.parse(text)
    except ValueError:
        return
    for s in segs:
        assert s.kind == "sysv" and in_u64(s.inode, s.size, s.count) and len(s.name) == 10


@FUZZ
@given(st.lists(st.fixed_dictionaries({
    "key": st.integers(-(1 << 31), (1 << 31) - 1), "shmid": st.integers(0, (1 << 31) - 1),
    "size": st.integers(0, 1 << 50), "nattch": st.integers(0, 1 << 20)}), max_size=6))
def test_sysvipc_kernel_format_parses_back(rows):
    t = Tree().sysv(rows)
    segs = sysv.parse(t.globals["proc/sysvipc/shm"].decode())
    assert [(s.inode, s.size, s.count, s.name) for s in segs] == \
        [(r["shmid"], r["size"], r["nattch"], "0x%08x" % (r["key"] & 0xFFFFFFFF)) for r in rows]


# -- status, cmdline, sidecars, names ------------------------------------------------------

@FUZZ
@given(ANY_TEXT)
def test_status_any_text(text):
    comm, uid = parse_status(text)
    assert isinstance(comm, str) and (uid is None or 0 <= uid < 1 << 34)


@FUZZ
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=15), st.integers(0, (1 << 32) - 1))
@example("a\\nb\rc\x1c", 1000)
def test_status_kernel_format_parses_back(comm, uid):
    escaped = comm.replace("\\", "\\\\").replace("\n", "\\n")
    text = f"Name:\t{escaped}\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
    assert parse_status(text) == (comm, uid)


@FUZZ
@given(st.binary(max_size=300))
def test_cmdline_any_bytes(data):
    s = parse_cmdline(data)
    assert isinstance(s, str) and "\0" not in s.rstrip()


@FUZZ
@given(ANY_TEXT, st.booleans())
def test_statfile_any_text(text, key_is_range):
    for key, (dev, ino, size, mode) in parse_statfile(text, key_is_range).items():
        assert in_u64(ino, size) and mode >= 0 and ":" in dev


@FUZZ
@given(ANY_TEXT)
def test_pid_names(name):
    if is_number(name):
        assert str(int(name)) == name


# -- JSON snapshots ------------------------------------------------------------------------

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
              st.floats(allow_nan=False), TEXT.map(lambda s: s[:30])),
    lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(TEXT.map(lambda s: s[:12]), kids, max_size=5)),
    max_leaves=30)
KEYS = ["schema", "buffers", "processes", "id", "kind", "inode", "size", "holders", "refs", "buffer",
        "pid", "vmas", "fd_list", "kernel", "skipped", "notes", "smaps", "in_rss", "filter"]


@FUZZ
@given(st.one_of(JSON, st.dictionaries(st.sampled_from(KEYS), JSON, max_size=8).map(lambda d: {**d, "schema": 1})))
def test_from_dict_any_json(doc):
    try:
        snap = from_dict(doc)
    except SourceError:
        return
    check_accepted(snap, doc)


def check_accepted(snap, doc):
    """Whatever from_dict accepts can be accounted and written, and keeps the invariant."""
    acct = account(snap)
    to_json(snap)
    if not doc.get("filter"):
        assert acct.total.pss == acct.held_bytes
    for pu in acct.processes.values():
        assert 0 <= pu.total.uss <= pu.total.pss <= pu.total.rss


def through_json(snap):
    """What `memtrack --json -o FILE` writes and `--root FILE` reads."""
    data = to_json(snap).encode("utf-8", "backslashreplace")
    return from_dict(json.loads(data.decode("utf-8")))


@FUZZ
@given(snapshots())
def test_snapshot_round_trip_and_pss_invariant(snap):
    assert through_json(snap) == snap
    acct = account(snap)
    assert acct.total.pss == acct.held_bytes == sum(b.size for b in snap.buffers if b.holders and b.size is not None)
    for b in snap.buffers:
        if b.size is not None and b.holders:
            shares = [acct.shares[b.id][p] for p in b.holders]
            assert sum(shares) == b.size and max(shares) - min(shares) <= 1


@FUZZ
@given(snapshots(), st.data())
def test_from_dict_mutated_snapshot(snap, data):
    """One leaf of a valid document replaced by arbitrary JSON: a SourceError, or a
    snapshot that accounts consistently."""
    doc = json.loads(to_json(snap))
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + [i])
    walk(doc, [])
    path = data.draw(st.sampled_from(paths[1:])) if len(paths) > 1 else []
    if path:
        node = doc
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = data.draw(JSON)
    try:
        got = from_dict(doc)
    except SourceError:
        return
    check_accepted(got, doc)


# -- parsers other helpers add ---------------------------------------------------------------
# TODO(issue 3): the DRM client fdinfo parser and the categories rules-file parser. Add them
# to OPTIONAL_TEXT_PARSERS as ("module", "function", allowed exception types): each gets the
# arbitrary-text property above (never raises anything else). Round-trip properties in the
# kernel's own format (Documentation/gpu/drm-usage-stats.rst) belong beside them.
OPTIONAL_TEXT_PARSERS = [
    ("memtrack.readers.drm", "parse_drm_fdinfo", (ValueError,)),
    ("memtrack.categories", "parse_rules", (ValueError, MemtrackError)),
]


@pytest.mark.parametrize("module,func,allowed", OPTIONAL_TEXT_PARSERS)
def test_optional_parsers_any_text(module, func, allowed):
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError):
        pytest.skip(f"{module}.{func} not in this tree yet")

    @FUZZ
    @given(ANY_TEXT)
    def prop(text):
        try:
            fn(text)
        except allowed:
            pass
    prop()
