"""`memtrack --adb` and `--ssh`: a stand-in adb on PATH (tests/helpers/fake_adb.py) that
checks what memtrack passes and runs it here, and a real sshd on 127.0.0.1 when one starts."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time

import pytest

import memtrack
from memtrack import remote

from remote_util import HELPERS, SRC, assert_rich, numbers

needs_root = pytest.mark.requires_root("map_files sizes need root")


@pytest.fixture
def adb_env(tmp_path):
    """PATH with the stand-in adb first; FAKE_ADB_LOG collects its argument lists."""
    bindir = tmp_path / "adb-bin"
    bindir.mkdir()
    (bindir / "adb").symlink_to(os.path.join(HELPERS, "fake_adb.py"))
    log = tmp_path / "adb.log"
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '')}", PYTHONPATH=SRC,
               FAKE_ADB_LOG=str(log))
    env.pop("FAKE_ADB_MODE", None)
    env.pop("FAKE_ADB_SERIALS", None)
    return env, log


def memtrack_cli(args, env, timeout=180):
    return subprocess.run([sys.executable, "-m", "memtrack"] + args, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, timeout=timeout, text=True)


def calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def one_line_error(p, text):
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert text in lines[0], lines[0]


@needs_root
def test_adb_view_matches_live_scan(holders, adb_env):
    env, log = adb_env
    p = memtrack_cli(["--adb", "emulator-5554", "--json", "-q"], env)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["source"] == "adb:emulator-5554"
    got = {q["pid"]: q["totals"] for q in doc["processes"] if q["pid"] in holders.pids}
    live = numbers(memtrack.scan(None, pids=holders.pids), holders.pids)[0]
    assert_rich(live, holders.pids)
    assert got == {pid: live[pid][0] for pid in holders.pids}
    (argv,) = calls(log)
    assert argv[:3] == ["-s", "emulator-5554", "exec-out"] and len(argv) == 4
    assert argv[3].startswith("sh -c '# memtrack capture script")
    assert argv[3].endswith("' memtrack-capture -f stream")


@needs_root
def test_adb_capture_writes_an_archive(holders, adb_env, tmp_path):
    env, log = adb_env
    out = tmp_path / "phone.tar.gz"
    pids = ",".join(map(str, holders.pids))
    p = memtrack_cli(["capture", "--adb", "--format", "tar", "-p", pids, "-o", str(out)], env)
    assert p.returncode == 0, p.stderr
    assert "wrote" in p.stderr
    (argv,) = calls(log)
    assert argv[0] == "exec-out" and argv[1].endswith(f"' memtrack-capture -f tar -p {pids}")
    with tarfile.open(out) as tf:
        meta = json.load(tf.extractfile("meta.json"))
        names = tf.getnames()
    assert meta["transport"] == "adb:" and meta["captured_by"] == "memtrack-capture.sh"
    assert meta["format"]["script_output"] == "tar"
    assert f"proc/{holders.pid}/fdstat" in names
    live = memtrack.scan(None, pids=holders.pids)
    assert numbers(memtrack.scan(str(out), pids=holders.pids), holders.pids) == numbers(live, holders.pids)


def test_adb_before_a_command_name_is_not_a_serial(adb_env):
    env, log = adb_env
    p = memtrack_cli(["--adb", "buffers", "-q"], env)
    assert p.returncode == 0, p.stderr
    assert "Kind" in p.stdout.splitlines()[0]
    (argv,) = calls(log)
    assert argv[0] == "exec-out"          # no -s buffers


@needs_root
def test_adb_falls_back_to_shell(holders, adb_env):
    """exec-out refused: `adb shell`, whose pty turns \\n into \\r\\n; the stream format is undone."""
    env, log = adb_env
    env["FAKE_ADB_MODE"] = "noexec"
    p = memtrack_cli(["--adb", "--json", "-q"], env)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert {q["pid"] for q in doc["processes"]} >= set(holders.pids)
    argv = calls(log)
    assert [a[0] for a in argv] == ["exec-out", "shell"]
    assert argv[1][1].endswith("memtrack-capture -f stream")


@pytest.mark.parametrize("mode,serials,args,text", [
    ("none", None, ["--adb"], "no device connected"),
    ("ok", "A1,B2", ["--adb"], "several devices connected: name one with --adb SERIAL"),
    ("ok", "A1,B2", ["--adb", "C3"], "device C3 not found"),
    ("unauthorized", None, ["--adb"], "device unauthorized"),
    ("nocat", None, ["--adb"], "capture script failed on the adb device: memtrack-capture: cat not found"),
])
def test_adb_errors_are_one_clear_line(adb_env, mode, serials, args, text):
    env, _ = adb_env
    env["FAKE_ADB_MODE"] = mode
    if serials:
        env["FAKE_ADB_SERIALS"] = serials
    one_line_error(memtrack_cli(args + ["ps"], env), text)


def test_adb_missing(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path), PYTHONPATH=SRC)
    one_line_error(memtrack_cli(["--adb", "ps"], env), "adb not found on PATH")


def test_adb_with_root_is_refused(adb_env):
    env, _ = adb_env
    one_line_error(memtrack_cli(["--adb", "--root", "/", "ps"], env), "pick one")


# -- ssh against a real sshd ---------------------------------------------------------------
def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    sshd_bin = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if sshd_bin is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("openssh-server/client not installed (scripts/test.sh installs them as root)")
    if os.geteuid() != 0:
        pytest.skip("sshd needs root to start here")
    d = tmp_path_factory.mktemp("sshd")
    os.chmod(d, 0o700)
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "LogLevel ERROR\n")
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "wb"))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    else:
        proc.kill()
    if proc.poll() is not None:
        pytest.skip("sshd would not start: " + (d / "sshd.log").read_text()[-300:])
    (d / "ssh_config").write_text(
        f"Host testbox\n HostName 127.0.0.1\n Port {port}\n User root\n IdentityFile {d}/user_key\n"
        f" IdentitiesOnly yes\n StrictHostKeyChecking no\n UserKnownHostsFile {d}/known_hosts\n LogLevel ERROR\n"
        f"Host deadbox\n HostName 127.0.0.1\n Port {_free_port()}\n ConnectTimeout 5\n")
    yield f"ssh -F {d}/ssh_config"
    proc.terminate()
    proc.wait(timeout=10)


def test_ssh_capture_and_view(holders, sshd, tmp_path):
    env = dict(os.environ, PYTHONPATH=SRC, MEMTRACK_SSH=sshd)
    out = tmp_path / "board.tar.gz"
    pids = ",".join(map(str, holders.pids))
    p = memtrack_cli(["capture", "--ssh", "testbox", "-p", pids, "-o", str(out)], env)
    assert p.returncode == 0, p.stderr
    live = memtrack.scan(None, pids=holders.pids)
    assert_rich(numbers(live, holders.pids)[0], holders.pids)
    assert numbers(memtrack.scan(str(out), pids=holders.pids), holders.pids) == numbers(live, holders.pids)
    p = memtrack_cli(["--ssh", "testbox", "show", str(holders.pid), "--json", "-q"], env)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["source"] == "ssh:testbox"
    assert [q["totals"]["rss"] for q in doc["processes"]] == [27 << 20]


def test_ssh_unreachable_is_one_line(sshd):
    env = dict(os.environ, PYTHONPATH=SRC, MEMTRACK_SSH=sshd)
    one_line_error(memtrack_cli(["--ssh", "deadbox", "ps"], env), "ssh deadbox:")


def test_ssh_script_failure_shows_its_stderr(sshd, monkeypatch):
    """The target's script refuses its arguments: its own message comes back."""
    monkeypatch.setenv("MEMTRACK_SSH", sshd)
    t = remote.SshTarget("testbox")
    with pytest.raises(remote.RemoteError, match=r"capture script failed on testbox \(exit 2\): "
                                                 r"memtrack-capture: -f must be auto, tar or stream"):
        t.run_script(["-f", "zip"])


@needs_root
@pytest.mark.parametrize("view", [["ps"], ["buffers"], ["show", "HOLDER"], ["summary"], ["matrix"], ["gpu"],
                                  ["dmabuf-dump"], ["ps", "--csv"], ["buffers", "--json"]])
def test_every_view_over_adb(holders, adb_env, view):
    env, log = adb_env
    args = [str(holders.pid) if a == "HOLDER" else a for a in view]
    p = memtrack_cli(["--adb", "emulator-5554"] + args + ["-q"], env)
    assert p.returncode == 0, p.stderr
    assert p.stdout
    if view[0] in ("ps", "show", "matrix") and "--json" not in view:
        assert "mt-holder" in p.stdout or str(holders.pid) in p.stdout
    assert len(calls(log)) == 1


def test_tag_refuses_a_device(adb_env):
    env, log = adb_env
    one_line_error(memtrack_cli(["--adb", "tag", "1", "3", "x"], env), "--adb/--ssh only capture a device")
    assert not log.exists()
