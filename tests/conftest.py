import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

SRC = SRC
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared"))
REAL_CAPTURE = os.path.join(SHARED, "fixtures", "h100-cuda-dmabuf.tar.gz")
if not os.path.exists(REAL_CAPTURE):      # a copy travels with the repository
    REAL_CAPTURE = os.path.join(HERE, "data", "h100-cuda-dmabuf.tar.gz")


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
