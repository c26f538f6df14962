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
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import MemtrackError
from .model import Snapshot

FIELDS = ("kind", "exporter", "name", "process")
DEFAULT_RULES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "rules.toml")


class RulesError(MemtrackError):
    """A malformed rules file: the message names the file and line."""


@dataclass(frozen=True)
class Rule:
    category: str
    conditions: Tuple[Tuple[str, Tuple[Callable[[str], bool], ...]], ...]
    where: str                                   # "file:line", for explanations

    def matches(self, values: Dict[str, Sequence[str]]) -> bool:
        for fld, preds in self.conditions:
            if not any(p(v) for v in values[fld] for p in preds):
                return False
        return True


def _pattern(text: str, where: str) -> Callable[[str], bool]:
    if text.startswith("re:"):
        try:
            rx = re.compile(text[3:])
        except re.error as exc:
            raise RulesError(f"{where}: bad regular expression {text[3:]!r}: {exc}") from None
        return lambda v: rx.search(v) is not None
    glob = text.lower()
    return lambda v: fnmatch.fnmatchcase(v.lower(), glob)


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
    while i < len(s) and s[i] in " \t\r\n":
        i += 1
    if i < len(s) and s[i] == "#":          # a comment inside a multi-line array
        while i < len(s) and s[i] != "\n":
            i += 1
        return _skip(s, i)
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
    n = 0
    while n < len(lines):
        lineno = n + 1

        body = ""

        def err(msg, pos=None, lineno=lineno):
            if pos is not None:                  # a position in the value text that began here
                lineno += body[:pos].count("\n")
            raise RulesError(f"{path}:{lineno}: {msg}")

        line = lines[n].strip()
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
        # a value may continue over lines (multi-line arrays): parse from here on the joined rest
        body = rest[1:] + "\n" + "\n".join(lines[n:])
        value, end = _value(body, 0, err)
        consumed = body[:end].count("\n")
        tail = body[end:].split("\n", 1)[0].strip()
        if tail and not tail.startswith("#"):
            err(f"unexpected text after the value: {tail!r}")
        n += consumed
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
            conds.append((key, tuple(_pattern(p, where) for p in pats)))
        rules.append(Rule(cat.strip(), tuple(conds), f"{path}:{lineno}"))
    return rules, repl


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise RulesError(f"{path}: {exc.strerror or exc}") from None
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


def _holder_names(snap: Snapshot, pids) -> List[str]:
    out = []
    for pid in pids:
        p = snap.process_map.get(pid)
        if p is None:
            continue
        if p.comm:
            out.append(p.comm)
        if p.cmdline:
            out.append(os.path.basename(p.cmdline.split(" ", 1)[0]))
    return out


def categorize(snap: Snapshot, rules: Sequence[Rule], overwrite: bool = True) -> Snapshot:
    """The snapshot with each buffer's category set by the first matching rule (None when
    none matches). overwrite=False keeps categories already set (a saved snapshot's)."""
    bufs = []
    changed = False
    for b in snap.buffers:
        if b.category is not None and not overwrite:
            bufs.append(b)
            continue
        values = {"kind": (b.kind,), "exporter": (b.exporter or "",), "name": (b.name or "",),
                  "process": _holder_names(snap, b.holders)}
        cat = next((r.category for r in rules if r.matches(values)), None)
        if cat != b.category:
            b = replace(b, category=cat)
            changed = True
        bufs.append(b)
    return replace(snap, buffers=tuple(bufs)) if changed else snap
