import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared"))
if not os.path.isdir(SHARED):
    # a git worktree one level deeper (wt/NAME): look for shared/ in the folders above
    _up = os.path.dirname(HERE)
    while os.path.dirname(_up) != _up and not os.path.isdir(os.path.join(_up, "shared", "fixtures")):
        _up = os.path.dirname(_up)
    if os.path.isdir(os.path.join(_up, "shared", "fixtures")):
        SHARED = os.path.join(_up, "shared")
REAL_CAPTURE = os.path.join(SHARED, "fixtures", "h100-cuda-dmabuf.tar.gz")
