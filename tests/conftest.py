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
    @pytest.fixture(scope="module")
    def holders():
        """Live processes holding every kind of buffer (remote_util.Holders), per module."""
        from remote_util import Holders
        h = Holders()
        yield h
        h.close()
