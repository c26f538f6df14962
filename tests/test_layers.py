"""The layers, read from the source: the core (everything outside cli/ and views/) never
imports views/, even inside a function, and the history, diff, exporter, util and views
modules take no private (_name) function from another module."""
from __future__ import annotations

import ast
import glob
import os

from conftest import SRC

PKG = os.path.join(SRC, "memtrack")


def imports(path):
    """(module imported, names taken from it) for every import in the file, at any depth,
    with relative imports resolved to dotted names under memtrack."""
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    here = rel[:-1]                                   # the package the file is in
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            yield mod, [a.name for a in node.names]


def modules(*parts):
    return sorted(glob.glob(os.path.join(PKG, *parts), recursive=True))


def test_the_core_does_not_import_views():
    core = [p for p in modules("**", "*.py")
            if os.path.relpath(p, PKG).split(os.sep)[0] not in ("cli", "views")]
    bad = [f"{os.path.relpath(p, SRC)} imports {mod}{'.' + ','.join(names) if names else ''}"
           for p in core for mod, names in imports(p)
           if mod == "memtrack.views" or mod.startswith("memtrack.views.")
           or (mod == "memtrack" and "views" in names)]
    assert not bad, bad


def test_no_private_function_is_taken_from_another_module():
    mine = (modules("history", "*.py") + modules("util", "*.py") + modules("views", "*.py")
            + [os.path.join(PKG, "diff.py"), os.path.join(PKG, "exporter.py")])
    bad = [f"{os.path.relpath(p, SRC)}: from {mod} import {n}" for p in mine for mod, names in imports(p)
           for n in names if n.startswith("_") and not n.startswith("__") and mod != "__future__"]
    assert not bad, bad
