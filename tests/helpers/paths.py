"""Paths the tests share: the source tree and the real H100 capture."""
import os

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(os.path.dirname(TESTS), "src")
SHARED = os.path.normpath(os.path.join(TESTS, "..", "..", "shared"))
REAL_CAPTURE = os.path.join(SHARED, "fixtures", "h100-cuda-dmabuf.tar.gz")
if not os.path.exists(REAL_CAPTURE):      # a copy travels with the repository
    REAL_CAPTURE = os.path.join(TESTS, "data", "h100-cuda-dmabuf.tar.gz")
