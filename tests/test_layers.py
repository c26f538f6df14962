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


def module_name(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join(rel)


def import_graph():
    """{module: the memtrack modules it imports}, from the source, imports inside functions
    included. `from pkg import name` is an import of pkg.name where that is a module, and
    of pkg (its __init__ runs) either way."""
    names = {module_name(p): p for p in modules("**", "*.py")}
    graph = {}
    for mod, path in names.items():
        out = set()
        for target, taken in imports(path):
            if target not in names:
                continue
            out.add(target)
            out.update(f"{target}.{n}" for n in taken if f"{target}.{n}" in names)
        # a submodule's import runs its packages' __init__ first: an edge like any other
        parts = mod.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in names)
        out.discard(mod)
        graph[mod] = out
    return graph


def cycles(graph):
    """One path per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    # packages import their own submodules (a package's __init__ re-exporting): that edge,
    # from a package down into itself, with the submodule's edge back up, is how packages
    # work; leave the package -> own submodule edges out, and every other loop is a cycle
    graph = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in import_graph().items()}
    assert not cycles(graph), cycles(graph)


def test_no_module_takes_another_modules_private_name():
    """Neither `from memtrack.x import _name` nor `x._name` on a memtrack module bound by an
    import (a private module, `from . import _libbpf`, is a module like any other)."""
    names = {module_name(p) for p in modules("**", "*.py")}
    bad = []
    for path in modules("**", "*.py"):
        me = module_name(path)
        bound = {}                  # local name -> the memtrack module it is
        for mod, taken in imports(path):
            if not mod.startswith("memtrack"):
                continue
            for n in taken:
                if f"{mod}.{n}" in names:
                    bound[n] = f"{mod}.{n}"
                elif n.startswith("_") and not n.startswith("__") and mod != me:
                    bad.append(f"{os.path.relpath(path, SRC)}: from {mod} import {n}")
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    if a.asname and isinstance(node, ast.Import) and a.name in names:
                        bound[a.asname] = a.name
                    elif a.asname and a.name in bound:
                        bound[a.asname] = bound.pop(a.name)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and bound[node.value.id] != me
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and f"{bound[node.value.id]}.{node.attr}" not in names):
                bad.append(f"{os.path.relpath(path, SRC)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, bad
