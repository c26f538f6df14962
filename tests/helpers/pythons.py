"""The oldest Python (3.9) on this machine, for the tests that the core runs there."""
import glob
import os
import shutil
import subprocess


def oldest_python():
    cands = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9"))) + \
        ["/usr/bin/python3.9", shutil.which("python3.9")]
    for cand in cands:
        if not cand or not os.access(cand, os.X_OK):
            continue
        r = subprocess.run([cand, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip() == "True":
            return cand
    return None


PY39 = oldest_python()
