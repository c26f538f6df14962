#!/usr/bin/env python3
"""A stand-in `adb` for the tests: checks the arguments memtrack passes, then runs the
command on this machine the way adbd would (exec-out: raw, stderr merged into stdout;
shell: through a pty that turns \\n into \\r\\n). FAKE_ADB_MODE picks the device state:
ok | none | unauthorized | noexec (exec-out unknown to this 'adbd') | nocat (a device
lacking cat). FAKE_ADB_SERIALS: the serials connected (default one: emulator-5554).
Every call is appended to FAKE_ADB_LOG as one JSON line."""
import json
import os
import subprocess
import sys

argv = sys.argv[1:]
log = os.environ.get("FAKE_ADB_LOG")
if log:
    with open(log, "a") as f:
        f.write(json.dumps(argv) + "\n")
mode = os.environ.get("FAKE_ADB_MODE", "ok")
serials = os.environ.get("FAKE_ADB_SERIALS", "emulator-5554").split(",")


def fail(msg):
    sys.stderr.write(msg + "\n")
    sys.exit(1)


serial = None
if argv[:1] == ["-s"]:
    if len(argv) < 2:
        fail("adb: -s requires an argument")
    serial, argv = argv[1], argv[2:]
if len(argv) != 2 or argv[0] not in ("exec-out", "shell"):
    fail(f"fake adb: unexpected arguments {argv!r} (want exec-out|shell and one command string)")
if not argv[1].startswith("sh -c '"):
    fail(f"fake adb: the command should start with sh -c '...': {argv[1][:40]!r}")
if mode == "none":
    fail("adb: no devices/emulators found")
if serial is None and len(serials) > 1:
    fail("adb: more than one device/emulator")
if serial is not None and serial not in serials:
    fail(f"adb: device '{serial}' not found")
if mode == "unauthorized":
    fail("adb: device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\n"
         "Try 'adb kill-server' if that seems wrong.\nOtherwise check for a confirmation dialog on your device.")
env = dict(os.environ)
bare = None
if mode == "nocat":                 # a device whose PATH has a shell and nothing else
    import tempfile
    bare = tempfile.mkdtemp(prefix="fake-adb-")
    os.symlink("/bin/sh", os.path.join(bare, "sh"))
    env["PATH"] = bare
if argv[0] == "exec-out":
    if mode == "noexec":
        fail("error: closed")
    p = subprocess.run(["/bin/sh", "-c", argv[1]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    if bare:
        import shutil
        shutil.rmtree(bare)
    sys.stdout.buffer.write(p.stdout)
    sys.exit(0)          # like old adb: exec-out does not pass the exit status on
p = subprocess.run(["/bin/sh", "-c", argv[1]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
sys.stdout.buffer.write(p.stdout.replace(b"\n", b"\r\n"))
sys.exit(p.returncode)
