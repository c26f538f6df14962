"""The core must run on minimal Pythons (3.9, e.g. on a target board): byte-compile every
module and run a scan with the oldest interpreter present, with no third-party package."""
from __future__ import annotations

import os
import subprocess

import pytest

from helpers.paths import REAL_CAPTURE, SRC
from helpers.pythons import PY39

pytestmark = pytest.mark.skipif(PY39 is None, reason="no Python 3.9 interpreter on this machine")


def test_every_module_compiles_on_39():
    r = subprocess.run([PY39, "-m", "compileall", "-q", "-f", "-x", r"/__pycache__/", os.path.join(SRC, "memtrack")],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
                                                                PYTHONPYCACHEPREFIX="/tmp/memtrack-pyc39"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_scan_runs_on_39_with_stdlib_only():
    r = subprocess.run([PY39, "-S", "-m", "memtrack", "--root", REAL_CAPTURE, "--json", "-q"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=SRC))
    assert r.returncode == 0, r.stderr
    assert '"dmabuf:1"' in r.stdout
