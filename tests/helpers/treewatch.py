"""A pytest plugin (`-p helpers.treewatch`, PYTHONPATH with tests/): runs only the tests that
take nothing but tmp_path, and pickles every kfixture.Tree they write (write_dir, write_tar),
with the number of tests that passed, to the file $MEMTRACK_TREES at the end. It lets a test
reuse the trees other test modules build without importing those modules."""
from __future__ import annotations

import inspect
import os
import pickle

import kfixture

_trees: list = []
_passed = [0]


def pytest_configure(config):
    for method in ("write_dir", "write_tar"):
        real = getattr(kfixture.Tree, method)

        def watched(self, path, real=real):
            if all(t is not self for t in _trees):
                _trees.append(self)
            return real(self, path)
        setattr(kfixture.Tree, method, watched)


def pytest_collection_modifyitems(config, items):
    keep = [i for i in items if getattr(i, "function", None) is not None and not hasattr(i, "callspec")
            and list(inspect.signature(i.function).parameters) == ["tmp_path"]]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        _passed[0] += 1


def pytest_sessionfinish(session):
    with open(os.environ["MEMTRACK_TREES"], "wb") as f:
        pickle.dump((_trees, _passed[0]), f)
