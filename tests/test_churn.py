"""A short churn run (bench/churn.py): ~100 processes/s open, pass over SCM_RIGHTS, map and
close memfds and shm while memtrack scans the whole machine in a loop. Every snapshot must
be consistent and the long-lived processes exact; no scan may crash."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CHURN = os.path.join(os.path.dirname(HERE), "bench", "churn.py")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc only")


def test_churn_short():
    seconds = os.environ.get("MEMTRACK_CHURN_SECONDS", "6")
    r = subprocess.run([sys.executable, CHURN, "-d", seconds, "--rate", "100", "--json"],
                       capture_output=True, text=True, timeout=240)
    assert r.stdout.strip(), r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["crashes"] == 0, res["problems"]
    assert res["inconsistent_snapshots"] == 0, res["problems"]
    assert res["scans"] >= 1 and res["spawned"] >= 2 and res["killed"] >= 1
    assert res["json_round_trips"] >= 1
    assert r.returncode == 0
