import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
if HERE not in sys.path:
    sys.path.insert(0, HERE)


try:
    import pytest
except ImportError:             # helpers import this directory's modules outside pytest
    pytest = None

if pytest is not None:
    def pytest_configure(config):
        config.addinivalue_line("markers", "requires_root(reason=None): skip unless run as root")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(item):
        # before the fixtures: a test needing root should not first start processes or copies
        mark = item.get_closest_marker("requires_root")
        if mark is not None and os.geteuid() != 0:
            pytest.skip(mark.args[0] if mark.args else "needs root")

    @pytest.fixture(scope="module")
    def holders():
        """Live processes holding every kind of buffer (remote_util.Holders), per module."""
        from remote_util import Holders
        h = Holders()
        yield h
        h.close()

    @pytest.fixture(scope="session")
    def nobody():
        """The nobody user with a copy of memtrack it may read (helpers.nobody.Nobody), or skip."""
        import shutil
        from helpers.nobody import SKIP, Nobody, nobody_copy
        got = nobody_copy()
        if got is None:
            pytest.skip(SKIP)
        yield Nobody(*got)
        shutil.rmtree(got[1], ignore_errors=True)
