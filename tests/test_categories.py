"""Category rules: the TOML subset, order, overrides, matching, errors naming the line."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest

import kfixture
import memtrack
from helpers.paths import REAL_CAPTURE, SRC
from memtrack.categories import RulesError, categorize, load_rules, parse_rules, parse_toml
from memtrack.cli import main



@pytest.fixture(scope="module")
def real():
    return memtrack.scan(REAL_CAPTURE)


def cats(snap):
    return {b.id: b.category for b in snap.buffers}


@pytest.fixture(autouse=True)
def no_user_rules(tmp_path, monkeypatch):
    # the developer's own rules.toml must not leak into the tests
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def write(tmp_path, text, name="rules.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_on_the_real_capture(real):
    got = cats(categorize(real, load_rules()))
    assert got == {"dmabuf:1": "GL",               # nv_dmabuf: a GPU driver's export
                   "memfd:2052": "GRAPHICS",       # wl_shm-pool
                   "memfd:2053": "MULTIMEDIA",     # pipewire-buffer
                   "shm:2": "OTHER", "sysv:0": "OTHER", "shmem:2048": "OTHER",
                   "shmem:2049": "OTHER", "shmem:2050": "OTHER", "shmem:2051": "OTHER",
                   "shmem:2054": "OTHER"}


def test_user_rules_go_first_and_extend(tmp_path, real):
    path = write(tmp_path, '# mine\n[[rule]]\ncategory = "PROBE"\nname = "probe-*"\n\n'
                           '[[rule]]\ncategory = "GPUCOPY"\nexporter = "nv_*"\n')
    got = cats(categorize(real, load_rules(path)))
    assert got["shm:2"] == "PROBE"
    assert got["dmabuf:1"] == "GPUCOPY"            # overrides the shipped GL rule
    assert got["memfd:2052"] == "GRAPHICS"         # the defaults still apply after mine
    assert got["sysv:0"] == "OTHER"


def test_replace_drops_the_defaults(tmp_path, real):
    path = write(tmp_path, 'replace = true\n[[rule]]\ncategory = "SHM"\nkind = ["shm", "sysv"]\n')
    got = cats(categorize(real, load_rules(path)))
    assert got["shm:2"] == "SHM" and got["sysv:0"] == "SHM"
    assert got["dmabuf:1"] is None and got["memfd:2052"] is None


def test_xdg_config_home_rules_are_used(tmp_path, monkeypatch, real):
    d = tmp_path / "cfg" / "memtrack"
    d.mkdir(parents=True)
    (d / "rules.toml").write_text('[[rule]]\ncategory = "MINE"\nkind = "sysv"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert cats(categorize(real, load_rules()))["sysv:0"] == "MINE"
    # an explicit --rules file wins over the user file
    other = write(tmp_path, '[[rule]]\ncategory = "EXPLICIT"\nkind = "sysv"\n')
    assert cats(categorize(real, load_rules(other)))["sysv:0"] == "EXPLICIT"


def test_first_match_wins_and_conditions_combine(tmp_path):
    t = kfixture.Tree()
    t.proc(10, "cameraserver", "/system/bin/cameraserver --x").dmabuf(3, ino=1, size=4096, exporter="system",
                                                                   name="frame")
    t.proc(11, "app").dmabuf(3, ino=2, size=4096, exporter="system", name="frame") \
        .memfd(4, "frame", ino=7, size=8192)
    snap = memtrack.scan(t.write_dir(str(tmp_path / "r")))
    rules, repl = parse_rules(
        'replace = true\n'
        '[[rule]]\ncategory = "CAM"\nprocess = "re:^camera"\nkind = "dmabuf"\n'   # both must hold
        '[[rule]]\ncategory = "FRAME"\nname = ["nope", "FR*"]\n'                     # any of, no case
        '[[rule]]\ncategory = "NEVER"\nname = "frame"\n', "t")
    assert repl is True
    got = cats(categorize(snap, rules))
    assert got == {"dmabuf:1": "CAM", "dmabuf:2": "FRAME", "memfd:7": "FRAME"}
    # process matches the argv[0] basename too, and a holder among several is enough
    rules2, _ = parse_rules('[[rule]]\ncategory = "B"\nprocess = "cameraserver"\nkind = "dmabuf"\n'
                            '[[rule]]\ncategory = "ALL"\n', "t")
    assert cats(categorize(snap, rules2)) == {"dmabuf:1": "B", "dmabuf:2": "ALL", "memfd:7": "ALL"}


def test_saved_categories_are_kept_unless_rules_are_given(tmp_path, real):
    snap = categorize(real, load_rules())
    mine, _ = parse_rules('replace = true\n[[rule]]\ncategory = "X"\n', "t")
    assert cats(categorize(snap, mine, overwrite=False)) == cats(snap)
    assert set(cats(categorize(snap, mine)).values()) == {"X"}


def test_toml_subset():
    top, rules = parse_toml(
        "# c\nreplace = false # trailing\n\n[[rule]]\ncategory = 'lit\\eral'\n"
        'name = [\n  "a\\"b",  # inside\n  "c",\n]\n[[rule]] # next\ncategory = "d\\te"\n', "f")
    assert top == {"replace": False}
    assert [(t, line) for t, line, _ in rules] == [
        ({"category": "lit\\eral", "name": ['a"b', "c"]}, 4), ({"category": "d\te"}, 10)]


@pytest.mark.parametrize("text, line, words", [
    ('[[rule]]\ncategory = "X"\nfoo = "y"\n', 3, "unknown rule key 'foo'"),
    ('[[rule]]\nname = "y"\n', 1, "needs `category"),
    ('[[rule]]\ncategory = "X"\nname = "re:(a"\n', 3, "bad regular expression"),
    ('[[rule]]\ncategory = "X\n', 2, "unterminated string"),
    ('[rules]\n', 1, "unknown table [rules]"),
    ('[[rule]]\ncategory = "X"\nname = [ "a",\n  3 ]\n', 4, "unsupported value '3 ]'"),
    ('[[rule]]\ncategory = "X"\ncategory = "Y"\n', 3, "duplicate key 'category'"),
    ('replace = "yes"\n', None, "`replace` must be true or false"),
    ('colour = "red"\n', None, "unknown top-level key 'colour'"),
    ('\n\n[[rule]]\ncategory = "X"\nname = []\n', 5, "non-empty list"),
    ('[[rule]]\ncategory = "X" junk\n', 2, "unexpected text after the value"),
    ('[[rule]]\njust words\n', 2, "expected `key = value`"),
    ('[[rule]]\ncategory = "X"\nname = ["a", "b"\n', 3, "unterminated array"),
])
def test_errors_name_the_line(text, line, words):
    with pytest.raises(RulesError) as ei:
        parse_rules(text, "my.toml")
    msg = str(ei.value)
    assert msg.startswith(f"my.toml:{line}: " if line else "my.toml: "), msg
    assert words in msg and "\n" not in msg


def test_cli_bad_rules_is_one_line_exit_2(tmp_path):
    path = write(tmp_path, '[[rule]]\ncategory = "X"\nkind = 5\n')
    env = dict(os.environ, PYTHONPATH=SRC, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    r = subprocess.run([sys.executable, "-m", "memtrack", "summary", "--root", REAL_CAPTURE, "--rules", path],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"memtrack: {path}:3: unsupported value '5' (strings, arrays of strings, true/false)\n"
    r = subprocess.run([sys.executable, "-m", "memtrack", "--root", REAL_CAPTURE, "--rules", str(tmp_path / "no")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "No such file" in r.stderr


def test_json_carries_categories(tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["buffers", "--root", REAL_CAPTURE, "--json"]) == 0
    doc = json.loads(out.getvalue())
    assert {b["id"]: b["category"] for b in doc["buffers"]}["memfd:2053"] == "MULTIMEDIA"


# -- the shortcuts (name prefilter, verdicts looked up) agree with the rules one by one ------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from memtrack.model import KINDS, Buffer, Process, Snapshot  # noqa: E402

WORDS = ["cam", "Camera", "pipewire", "wl_shm", "mesa", "x", "", "İ", "Σς", "a\nb", "[", "*"]
TEXT = st.one_of(st.sampled_from(WORDS), st.text(st.sampled_from("aAcmIİ-*?[]\n_Σς.x"), max_size=8))
PATTERN = st.one_of(TEXT, TEXT.map(lambda t: f"*{t}*"), TEXT.map(lambda t: f"{t}?"),
                    st.sampled_from(["*", "?*", "re:^$", "re:a$", "re:(?i)CAM", "[a-c]*", "*[!x]"]))


def brute_force(snap, rules):
    """Every rule tried on every buffer, as the rules file says."""
    names = {p.pid: [n for n in (p.comm, os.path.basename(p.cmdline.split(" ", 1)[0]) if p.cmdline else "")
                     if n] for p in snap.processes}
    out = {}
    for b in snap.buffers:
        values = {"kind": (b.kind,), "exporter": (b.exporter or "",), "name": (b.name or "",),
                  "process": [n for pid in b.holders for n in names.get(pid, [])]}
        out[b.id] = next((r.category for r in rules if r.matches(values)), None)
    return out


@st.composite
def rules_and_snapshot(draw):
    text = ""
    for i in range(draw(st.integers(1, 5))):
        text += f'[[rule]]\ncategory = "C{i}"\n'
        for key in draw(st.sets(st.sampled_from(["kind", "exporter", "name", "process"]), max_size=3)):
            pats = draw(st.lists(PATTERN, min_size=1, max_size=3))
            text += f"{key} = [{', '.join(json.dumps(p, ensure_ascii=False) for p in pats)}]\n"
    rules, _ = parse_rules(text, "t")
    pids = list(range(1, draw(st.integers(1, 5)) + 1))
    procs = tuple(Process(pid, draw(TEXT), draw(TEXT)) for pid in pids)
    bufs = tuple(Buffer(f"b{i}", draw(st.sampled_from(KINDS)), i, exporter=draw(st.one_of(st.none(), TEXT)),
                        name=draw(st.one_of(st.none(), TEXT)),
                        holders=tuple(sorted(draw(st.sets(st.sampled_from(pids), max_size=3)))))
                 for i in range(draw(st.integers(0, 30))))
    return rules, Snapshot(buffers=bufs, processes=procs)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules_and_snapshot())
def test_categorize_agrees_with_every_rule_tried(case):
    rules, snap = case
    assert cats(categorize(snap, rules)) == brute_force(snap, rules)


def test_name_prefilter_folds_case_as_the_globs_do():
    """The names prefilter (_may_match) must pass every name a glob matches: it compares
    case as re.IGNORECASE does, which takes σ, ς and Σ (ς is what str.lower() writes at a
    word's end), ı and i, ſ and s, K (Kelvin) and k, µ and μ for one another, and lowers
    İ to "i" (str.lower() makes it two characters)."""
    from memtrack.categories import _RE_CLASSES, _Condition, _may_match
    letters = "".join(_RE_CLASSES) + "\u0130I\u212a\u212b\u00c5\u03a3"
    for a in letters:
        for b in letters:
            for pattern in (f"*x{a}y*", f"{a}*"):
                cond = _Condition([pattern], "t")
                for name in (f"x{b}y", f"X{b.upper()}Y", f"{b}", f"ΑΣ{b}", f"x{b}yΑΣ"):
                    if cond(name):
                        assert _may_match([cond], [name])[0], (pattern, name)
    # the case Hypothesis found: a final sigma against a capital sigma
    cond = _Condition(["*Σ*"], "t")
    assert cond("ς") and _may_match([cond], ["ς"])[0]
