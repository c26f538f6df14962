"""Buffer categories from an ordered rules file: first match wins.

A rule names a category (the Android memtrack HAL's GL, GRAPHICS, MULTIMEDIA, CAMERA, OTHER,
or any name) and conditions on the buffer's kind, exporter, name and holder process names.
Every condition given must hold; a condition's value is a pattern or a list of patterns
(any may match). A pattern is a glob (fnmatch, case-insensitive) or, prefixed `re:`, a
regular expression searched in the value. `process` matches when any holder's comm or
argv[0] basename matches. A rule without conditions matches every buffer.

Rules file (a TOML subset: comments, `key = value`, `[[rule]]` tables; values are strings,
arrays of strings, booleans)::

    replace = false            # true: drop the shipped defaults, use only these rules
    [[rule]]
    category = "CAMERA"
    process = ["cameraserver", "re:^camera"]
    exporter = "system*"

User rules come before the shipped defaults (so they override them) unless `replace = true`.
Applying rules is a pure step Snapshot -> Snapshot that fills Buffer.category.
"""
from __future__ import annotations

import fnmatch
import os
import re
import stat
from dataclasses import dataclass, replace
from itertools import repeat
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import MemtrackError
from .model import Snapshot, with_category

FIELDS = ("kind", "exporter", "name", "process")
DEFAULT_RULES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "rules.toml")


class RulesError(MemtrackError):
    """A malformed rules file: the message names the file and line."""


@dataclass(frozen=True)
class Rule:
    category: str
    conditions: Tuple[Tuple[str, Callable[[str], bool]], ...]   # (field, value -> matches)
    where: str                                   # "file:line", for explanations

    def matches(self, values: Dict[str, Sequence[str]]) -> bool:
        for fld, pred in self.conditions:
            if not any(pred(v) for v in values[fld]):
                return False
        return True


class _Condition:
    """One condition's patterns as a predicate: the globs joined into one case-insensitive
    regex, the `re:` patterns searched, the answer cached per value (kinds, exporters and
    process names repeat across thousands of buffers)."""
    __slots__ = ("globs", "raw_globs", "searches", "glob", "cache")

    def __init__(self, patterns: Sequence[str], where: str):
        self.globs, self.raw_globs, self.searches = [], [], []
        for text in patterns:
            if not isinstance(text, str):
                raise RulesError(f"{where}: patterns must be strings, got {text!r}")
            if text.startswith("re:"):
                try:
                    self.searches.append(re.compile(text[3:]))
                except re.error as exc:
                    raise RulesError(f"{where}: bad regular expression {text[3:]!r}: {exc}") from None
            else:
                self.globs.append(fnmatch.translate(text))
                self.raw_globs.append(text)
        self.glob = re.compile("|".join(self.globs), re.IGNORECASE) if self.globs else None
        self.cache: Dict[str, bool] = {}

    def __call__(self, v: str) -> bool:
        hit = self.cache.get(v)
        if hit is None:
            hit = bool((self.glob is not None and self.glob.match(v)) or any(rx.search(v) for rx in self.searches))
            if len(self.cache) < 65536:
                self.cache[v] = hit
        return hit


# Letters re.IGNORECASE takes for one another that str.lower() leaves apart (CPython's
# re._compiler._equivalences, unchanged since 3.7), each mapped to the first of its class
_RE_CLASSES = ("i\u0131", "s\u017f", "\u00b5\u03bc", "\u03b9\u0345\u1fbe", "\u0390\u1fd3",
               "\u03b0\u1fe3", "\u03b2\u03d0", "\u03b5\u03f5", "\u03b8\u03d1", "\u03ba\u03f0",
               "\u03c0\u03d6", "\u03c1\u03f1", "\u03c3\u03c2", "\u03c6\u03d5", "\u1e61\u1e9b",
               "\ufb05\ufb06")
_RE_FOLD = str.maketrans({c: cls[0] for cls in _RE_CLASSES for c in cls[1:]})


def _fold(v: str) -> str:
    """v as re.IGNORECASE compares it, one character for one: lower case (İ lowers to "i",
    as re has it, not to two characters), and each class of _RE_CLASSES one letter (σ and
    ς, which str.lower() writes by context)."""
    if v.isascii():
        return v.lower()
    return v.replace("\u0130", "i").lower().translate(_RE_FOLD)


def _may_match(conds: Sequence["_Condition"], values: List[str]) -> list:
    """For each value, whether any of these conditions could match it (a superset, as a
    truth value): every glob needs its longest literal piece somewhere in the value, so one
    search for all those pieces rules most values out without running the globs."""
    first: Dict[str, List[str]] = {}
    searches = []
    for c in conds:
        searches.extend(c.searches)
        for g in c.raw_globs:
            lit = _fold(max(re.split(r"[*?]|\[[^\]]*\]?", g), key=len))
            if not lit:
                return [True] * len(values)    # a glob like "*" or "?*": anything may match
            first.setdefault(lit[0], []).append(re.escape(lit[1:]))
    # the pieces grouped by first character: twice as fast to search as a plain alternation
    pattern = "|".join(re.escape(ch) + "(?:" + "|".join(rests) + ")" for ch, rests in first.items())
    if not pattern:
        out = [None] * len(values)
    else:
        out = list(map(re.compile(pattern).search, map(_fold, values)))
    if searches:
        out = [hit or any(r.search(v) for r in searches) for hit, v in zip(out, values)]
    return out


# -- the TOML subset ---------------------------------------------------------------------
_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESC = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "r": "\r"}


def _string(s: str, i: int, err) -> Tuple[str, int]:
    q, start = s[i], i
    out = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\n":
            break
        if c == q:
            return "".join(out), i + 1
        if c == "\\" and q == '"':
            if i + 1 >= len(s) or s[i + 1] not in _ESC:
                err("unsupported escape in string", i)
            out.append(_ESC[s[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    err("unterminated string", start)


def _skip(s: str, i: int) -> int:
    """Past blanks, newlines and comments (inside a multi-line array)."""
    while i < len(s):
        if s[i] in " \t\r\n":
            i += 1
        elif s[i] == "#":
            while i < len(s) and s[i] != "\n":
                i += 1
        else:
            break
    return i


def _value(s: str, i: int, err):
    i = _skip(s, i)
    if i >= len(s):
        err("missing value", i)
    c = s[i]
    if c in "\"'":
        return _string(s, i, err)
    if s.startswith("true", i):
        return True, i + 4
    if s.startswith("false", i):
        return False, i + 5
    if c == "[":
        start, items = i, []
        i = _skip(s, i + 1)
        while i < len(s) and s[i] != "]":
            if s[i] == "[":                     # refused before parsing it: no recursion
                err("arrays hold strings only", i)
            v, i = _value(s, i, err)
            if not isinstance(v, str):
                err("arrays hold strings only", i - 1)
            items.append(v)
            i = _skip(s, i)
            if i < len(s) and s[i] == ",":
                i = _skip(s, i + 1)
            elif i < len(s) and s[i] != "]":
                err("expected ',' or ']' in array", i)
        if i >= len(s):
            err("unterminated array", start)
        return items, i + 1
    err(f"unsupported value {s[i:].split(chr(10))[0].strip()!r} (strings, arrays of strings, true/false)", i)


def parse_toml(text: str, path: str = "rules") -> Tuple[dict, List[Tuple[dict, int, Dict[str, int]]]]:
    """(top-level keys, [(table, its line, {key: line})] for each [[rule]])."""
    top: dict = {}
    rules: List[Tuple[dict, int, Dict[str, int]]] = []
    current, keylines = top, {}
    lines = text.split("\n")
    starts = [0]                                 # offset in text of each line
    for ln in lines[:-1]:
        starts.append(starts[-1] + len(ln) + 1)
    n = 0
    while n < len(lines):
        lineno = n + 1

        def err(msg, pos=None, lineno=lineno):
            if pos is not None:                  # a position in text, in a value begun here
                lineno = text.count("\n", 0, pos) + 1
            raise RulesError(f"{path}:{lineno}: {msg}")

        raw = lines[n]
        line = raw.strip()
        n += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            head = line.split("#", 1)[0].strip()
            if head == "[[rule]]":
                current, keylines = {}, {}
                rules.append((current, lineno, keylines))
                continue
            err(f"unknown table {head} (only [[rule]] tables)")
        m = _KEY.match(line)
        rest = line[m.end():].lstrip() if m else ""
        if not m or not rest.startswith("="):
            err("expected `key = value`")
        key = m.group(0)
        # a value may continue over lines (multi-line arrays): parse it in the whole text,
        # from just after the `=` (no copy of the rest of the file per key)
        pos = starts[n - 1] + raw.index("=", len(raw) - len(raw.lstrip()) + m.end()) + 1
        value, end = _value(text, pos, err)
        eol = text.find("\n", end)
        tail = text[end:eol if eol >= 0 else len(text)].strip()
        if tail and not tail.startswith("#"):
            err(f"unexpected text after the value: {tail!r}")
        n += text.count("\n", pos, end)
        if key in current:
            err(f"duplicate key {key!r}")
        current[key] = value
        keylines[key] = lineno
    return top, rules


def parse_rules(text: str, path: str = "rules") -> Tuple[List[Rule], bool]:
    """(rules, replace): the rules of one file, and whether they replace the defaults."""
    top, tables = parse_toml(text, path)
    unknown = set(top) - {"replace"}
    if unknown:
        raise RulesError(f"{path}: unknown top-level key {sorted(unknown)[0]!r} (only `replace`; "
                         "rules go in [[rule]] tables)")
    repl = top.get("replace", False)
    if not isinstance(repl, bool):
        raise RulesError(f"{path}: `replace` must be true or false")
    rules = []
    for table, lineno, keylines in tables:
        where = f"{path}:{lineno}"
        cat = table.get("category")
        if not isinstance(cat, str) or not cat.strip():
            raise RulesError(f"{where}: a [[rule]] needs `category = \"NAME\"`")
        conds = []
        for key, value in table.items():
            if key == "category":
                continue
            where = f"{path}:{keylines[key]}"
            if key not in FIELDS:
                raise RulesError(f"{where}: unknown rule key {key!r} (keys: category, {', '.join(FIELDS)})")
            pats = [value] if isinstance(value, str) else value
            if not isinstance(pats, list) or not pats:
                raise RulesError(f"{where}: `{key}` needs a pattern or a non-empty list of patterns")
            conds.append((key, _Condition(pats, where)))
        rules.append(Rule(cat.strip(), tuple(conds), f"{path}:{lineno}"))
    return rules, repl


#: a rules file is a few dozen rules: more than this is no rules file
MAX_RULES_BYTES = 1 << 20


def _read(path: str) -> str:
    """The text of a rules file: a regular file (a device such as /dev/zero would be read
    forever, a FIFO would block) of at most MAX_RULES_BYTES."""
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer (it is refused just below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RulesError(f"{path}: not a regular file")
            data = f.read(MAX_RULES_BYTES + 1)
    except OSError as exc:
        raise RulesError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > MAX_RULES_BYTES:
        raise RulesError(f"{path}: larger than {MAX_RULES_BYTES >> 20} MiB: not a rules file")
    try:
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError:
        raise RulesError(f"{path}: not UTF-8 text") from None


def user_rules_path() -> Optional[str]:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    path = os.path.join(base, "memtrack", "rules.toml")
    return path if os.path.isfile(path) else None


def load_rules(path: Optional[str] = None, use_user_file: bool = True) -> List[Rule]:
    """The rules in force: `path` (else the user's rules.toml, if any) before the shipped
    defaults, or alone when the file says `replace = true`."""
    defaults, _ = parse_rules(_read(DEFAULT_RULES), DEFAULT_RULES)
    if path is None and use_user_file:
        path = user_rules_path()
    if path is None:
        return defaults
    mine, repl = parse_rules(_read(path), path)
    return mine if repl else mine + defaults


def _holder_names(snap: Snapshot) -> Dict[int, Tuple[str, ...]]:
    out = {}
    for p in snap.processes:
        names = []
        if p.comm:
            names.append(p.comm)
        if p.cmdline:
            names.append(os.path.basename(p.cmdline.split(" ", 1)[0]))
        out[p.pid] = tuple(names)
    return out


def categorize(snap: Snapshot, rules: Sequence[Rule], overwrite: bool = True) -> Snapshot:
    """The snapshot with each buffer's category set by the first matching rule (None when
    none matches). overwrite=False keeps categories already set (a saved snapshot's).

    Buffer names are nearly all distinct, everything else repeats: one pass over all the
    names tells which can matter to any rule; for the others the verdict depends only on
    kind, exporter and holders, and is looked up instead of evaluated again."""
    names = _holder_names(snap)
    empty: Tuple[str, ...] = ()
    name_conds = [pred for r in rules for fld, pred in r.conditions if fld == "name"]
    buffers = snap.buffers
    matters = _may_match(name_conds, [b.name or "" for b in buffers]) if name_conds else repeat(False)
    by_holders: Dict[tuple, Optional[str]] = {}   # (kind, exporter, holders, name or None) -> category
    by_names: Dict[tuple, Optional[str]] = {}     # (kind, exporter, holder names, name or None) -> category

    def verdict(b, name_key):
        holders = b.holders
        procs = names.get(holders[0], empty) if len(holders) == 1 else \
            tuple(n for pid in holders for n in names.get(pid, empty))
        key = (b.kind, b.exporter or "", procs, name_key)
        cat = by_names.get(key, by_names)
        if cat is by_names:
            values = {"kind": (b.kind,), "exporter": (b.exporter or "",), "name": (b.name or "",),
                      "process": procs}
            cat = by_names[key] = next((r.category for r in rules if r.matches(values)), None)
        return cat

    bufs = []
    keep = bufs.append
    changed = False
    for b, matter in zip(buffers, matters):
        if b.category is not None and not overwrite:
            keep(b)
            continue
        key = (b.kind, b.exporter, b.holders, (b.name or "") if matter else None)
        cat = by_holders.get(key, by_holders)
        if cat is by_holders:
            cat = by_holders[key] = verdict(b, key[3])
        if cat != b.category:
            b = with_category(b, cat)
            changed = True
        keep(b)
    return replace(snap, buffers=tuple(bufs)) if changed else snap
