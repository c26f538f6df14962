"""Every -o (and record's database) follows a symlink only where the kernel's
fs.protected_symlinks=1 would follow it, whatever the sysctl says: a link a user planted in a
sticky world-writable directory (/tmp) to a root-only file is refused with one line, and the
file is untouched. Links the rule allows (root's own, the directory owner's, those in a
directory without the sticky bit, in any component of the path) are followed as before."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from helpers.paths import REAL_CAPTURE
from helpers.nobody import NOBODY
from livehelpers import run_memtrack

pytestmark = [pytest.mark.requires_root("planting a link as nobody needs root and setpriv"),
              pytest.mark.skipif(not shutil.which("setpriv"),
                                 reason="planting a link as nobody needs root and setpriv")]

SECRET = b"root:only:19000::::::\n"


@pytest.fixture
def box():
    """top/ (root, 0755) holds secret (root, 0600), sticky/ (root, 1777, like /tmp),
    open/ (root, 0777, no sticky bit) and dir/ (root, 0755)."""
    top = tempfile.mkdtemp(prefix="memtrack-links-")
    os.chmod(top, 0o755)                                # nobody must reach sticky/
    for name, mode in (("sticky", 0o1777), ("open", 0o777), ("dir", 0o755)):
        os.mkdir(os.path.join(top, name))
        os.chmod(os.path.join(top, name), mode)
    secret = os.path.join(top, "secret")
    with open(secret, "wb") as f:
        f.write(SECRET)
    os.chmod(secret, 0o600)
    os.utime(secret, (1_000_000_000, 1_000_000_000))
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def plant(target, link):
    """ln -s target link, run as nobody (a real user's link, made the way a user makes it)."""
    subprocess.run(NOBODY + ["ln", "-s", target, link], check=True)
    assert os.lstat(link).st_uid == 65534


def untouched(path, entries_of=()):
    st = os.stat(path)
    assert open(path, "rb").read() == SECRET
    assert (st.st_mtime, st.st_uid, st.st_mode & 0o7777) == (1_000_000_000, 0, 0o600)
    for d, names in entries_of:                         # no temp file left, nothing new
        assert sorted(os.listdir(d)) == sorted(names), os.listdir(d)


def refused(r, shown):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "refusing to" in r.stderr and shown in r.stderr, r.stderr


def history(path):
    """A one-snapshot history from the fixture capture."""
    import memtrack
    from memtrack.history import Recorder
    rec = Recorder(path)
    rec.add(memtrack.scan(REAL_CAPTURE))
    rec.close()


def test_a_planted_link_in_a_sticky_directory_is_not_followed_by_any_output(box, tmp_path):
    secret = os.path.join(box, "secret")
    sticky = os.path.join(box, "sticky")
    db = str(tmp_path / "h.db")
    history(db)
    runs = [("x.json", ("--root", REAL_CAPTURE, "--json")),
            ("x.csv", ("--root", REAL_CAPTURE, "ps", "--csv")),
            ("x.prom", ("--root", REAL_CAPTURE, "textfile")),
            ("x.tar.gz", ("capture", "-p", str(os.getpid()))),
            ("x.trace.json", ("export-trace", db)),
            ("x.db", ("record", "-n", "1", "-i", "1"))]
    try:
        import matplotlib  # noqa: F401
        runs.append(("x.png", ("plot", db)))
    except ImportError:
        pass
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        runs = [x for x in runs if x[0] != "x.prom"]
    for name, args in runs:
        link = os.path.join(sticky, name)
        plant(secret, link)
        refused(run_memtrack(*args, "-o", link, timeout=300), link)
        untouched(secret, [(sticky, [name]), (box, ["dir", "open", "secret", "sticky"])])
        assert os.readlink(link) == secret
        os.unlink(link)


def test_a_planted_link_in_any_component_of_the_path_is_not_followed(box):
    secret = os.path.join(box, "secret")
    sticky = os.path.join(box, "sticky")
    plant(os.path.join(box, "dir"), os.path.join(sticky, "d"))       # sticky/d -> dir
    out = os.path.join(sticky, "d", "x.json")
    refused(run_memtrack("--root", REAL_CAPTURE, "--json", "-o", out), os.path.join(sticky, "d"))
    assert os.listdir(os.path.join(box, "dir")) == []
    # a root link to the planted one: the walk meets nobody's link at its second step
    os.symlink(os.path.join(sticky, "d"), os.path.join(box, "via"))
    refused(run_memtrack("--root", REAL_CAPTURE, "--json", "-o", os.path.join(box, "via", "x.json")),
            os.path.join(sticky, "d"))
    assert os.listdir(os.path.join(box, "dir")) == []
    # nobody's link to the secret, reached through a path with .. in it
    plant(secret, os.path.join(sticky, "s"))
    refused(run_memtrack("--root", REAL_CAPTURE, "--json", "-o",
                         os.path.join(box, "dir", "..", "sticky", "s")), os.path.join(sticky, "s"))
    untouched(secret)


def test_another_users_file_in_a_sticky_directory_is_not_replaced(box):
    """protected_regular: root would hand its output to the file's owner (owner and mode
    are kept), so the file is left alone."""
    theirs = os.path.join(box, "sticky", "x.json")
    subprocess.run(NOBODY + ["sh", "-c", f"umask 0; echo mine > {theirs}"], check=True)
    before = os.stat(theirs)
    refused(run_memtrack("--root", REAL_CAPTURE, "--json", "-o", theirs), theirs)
    after = os.stat(theirs)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert open(theirs).read() == "mine\n"


def test_a_device_node_in_a_sticky_directory_is_not_written(box):
    """A hard link to a root device would be owned by root: a device node in a sticky
    world-writable directory is refused whoever owns it; a FIFO there is written in place."""
    dev = os.path.join(box, "sticky", "null")
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    refused(run_memtrack("--root", REAL_CAPTURE, "--json", "-o", dev), dev)
    fifo = os.path.join(box, "sticky", "fifo")
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", fifo], stdout=subprocess.PIPE)
    r = run_memtrack("--root", REAL_CAPTURE, "--json", "-o", fifo)
    assert r.returncode == 0, r.stderr
    assert reader.communicate(timeout=60)[0].startswith(b"{")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_planted_sqlite_side_file_is_refused(box):
    """record's database is root's own new file, but SQLite would open its -wal beside it."""
    secret = os.path.join(box, "secret")
    sticky = os.path.join(box, "sticky")
    plant(secret, os.path.join(sticky, "h.db-wal"))
    refused(run_memtrack("record", "-n", "1", "-i", "1", "-o", os.path.join(sticky, "h.db"), timeout=300),
            os.path.join(sticky, "h.db-wal"))
    untouched(secret)


def test_links_the_rule_allows_are_followed(box):
    sticky, open_, dir_ = (os.path.join(box, n) for n in ("sticky", "open", "dir"))

    def wrote(out, real):
        r = run_memtrack("--root", REAL_CAPTURE, "--json", "-o", out)
        assert r.returncode == 0, r.stderr
        with open(real) as f:
            assert f.read(1) == "{"
        os.unlink(real)

    os.symlink(os.path.join(dir_, "a.json"), os.path.join(sticky, "root.json"))     # root's own link
    wrote(os.path.join(sticky, "root.json"), os.path.join(dir_, "a.json"))
    assert os.path.islink(os.path.join(sticky, "root.json"))
    plant(os.path.join(dir_, "b.json"), os.path.join(open_, "b.json"))             # no sticky bit
    wrote(os.path.join(open_, "b.json"), os.path.join(dir_, "b.json"))
    os.symlink(dir_, os.path.join(sticky, "d"))                                   # a directory link
    wrote(os.path.join(sticky, "d", "c.json"), os.path.join(dir_, "c.json"))
    # a sticky directory nobody owns: nobody's link there is the directory owner's
    os.chown(sticky, 65534, 65534)
    plant(os.path.join(dir_, "e.json"), os.path.join(sticky, "e.json"))
    wrote(os.path.join(sticky, "e.json"), os.path.join(dir_, "e.json"))
    # record through root's own link: the database is written where it leads
    os.chown(sticky, 0, 0)
    os.symlink(os.path.join(dir_, "h.db"), os.path.join(sticky, "h.db"))
    r = run_memtrack("record", "-n", "1", "-i", "1", "-o", os.path.join(sticky, "h.db"), timeout=300)
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(os.path.join(dir_, "h.db")) > 0 and os.path.islink(os.path.join(sticky, "h.db"))


def test_the_writer_does_no_work_at_import():
    """issue 16: importing the writer reads no file and leaves the umask alone."""
    import sys
    code = ("import builtins, os; seen = []; real = builtins.open\n"
            "builtins.open = lambda *a, **k: (seen.append(a[0]), real(*a, **k))[1]\n"
            "um = os.umask; os.umask = lambda m: (seen.append('umask'), um(m))[1]\n"
            "import memtrack.util.atomic\n"
            "assert not [s for s in seen if s == 'umask' or str(s).startswith('/proc')], seen\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__))), "src")))
    assert r.returncode == 0, r.stderr
