"""Partial rights and odd processes: an unprivileged user, a process in another PID
namespace, a zombie. What can be read is exact; what cannot is counted, said once on
stderr, and the exit status stays 0."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import memtrack
from memtrack.account import account
from helpers.nobody import NOBODY as DROP
from livehelpers import run_memtrack

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc only")

HOLD = ("import os,sys\n"
        "f=os.memfd_create('rights-mine');os.ftruncate(f,{size})\n"
        "p='/dev/shm/memtrack-rights-%d'%os.getpid();s=os.open(p,os.O_RDWR|os.O_CREAT,0o600);os.unlink(p)\n"
        "os.ftruncate(s,{shm})\n"
        "print(os.getpid(),os.fstat(f).st_ino,flush=True);sys.stdin.read()\n")


@pytest.fixture
def nobody_pkg(nobody):
    """A copy of the package the nobody user can read, or skip."""
    return nobody.pkg_for_this_interpreter()

def as_nobody(pkg, *args):
    env = dict(os.environ, PYTHONPATH=pkg)
    return subprocess.run(DROP + [sys.executable, "-m", "memtrack", *args], capture_output=True,
                          text=True, env=env, cwd=pkg, timeout=120)


def start(cmd):
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pid, ino = map(int, p.stdout.readline().split())
    return p, pid, ino


def stop(p):
    p.stdin.close()
    p.wait(timeout=30)


def test_unprivileged_own_exact_others_denied_one_line(nobody_pkg):
    mine, pid, ino = start(DROP + [sys.executable, "-c", HOLD.format(size=20000, shm=12288)])
    roots, rpid, _ = start([sys.executable, "-c", HOLD.format(size=4096, shm=4096)])
    try:
        r = as_nobody(nobody_pkg, "--json", "-q")
        full = as_nobody(nobody_pkg, "--json")
    finally:
        stop(mine)
        stop(roots)
    assert r.returncode == 0 and full.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("memtrack: access denied for "), r.stderr
    doc = json.loads(r.stdout)
    assert rpid in doc["skipped"]["denied"] and rpid not in {p["pid"] for p in doc["processes"]}
    me = [p for p in doc["processes"] if p["pid"] == pid]
    assert me and me[0]["totals"]["rss"] == 20000 + 12288 and me[0]["totals"]["uss"] == 20000 + 12288
    # the kernel tables nobody cannot read: noted in the snapshot, not fatal
    notes = " | ".join(json.loads(full.stdout)["notes"])
    assert "dma-buf" in notes and ("not readable" in notes or "no dma-buf kernel table" in notes), notes
    assert doc["kernel"]["kernel_only_bytes"] is None
    assert "Traceback" not in full.stderr


def test_unprivileged_sees_a_zombie_and_a_pid_namespace_calmly(nobody_pkg):
    """nobody's own zombie and nobody's own process in another PID namespace (as seen from
    the host): both handled without noise about them."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare")
    code = ("import os,sys,time\n"
            "f=os.memfd_create('ns-pool');os.ftruncate(f,8192)\n"
            "z=os.fork()\n"
            "if z==0: os._exit(0)\n"
            "time.sleep(0.2)\n"                      # z is now a zombie: never reaped
            "print(os.getpid(),z,flush=True);sys.stdin.read()\n")
    p = subprocess.Popen(DROP + [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pid, zombie = map(int, p.stdout.readline().split())
    try:
        with open(f"/proc/{zombie}/status") as f:
            assert "State:\tZ" in f.read()
        r = as_nobody(nobody_pkg, "--json", "-q")
    finally:
        stop(p)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    skipped = set(doc["skipped"]["denied"]) | set(doc["skipped"]["unreadable"])
    assert zombie not in skipped and zombie not in {q["pid"] for q in doc["processes"]}
    assert [q["totals"]["rss"] for q in doc["processes"] if q["pid"] == pid] == [8192]


@pytest.mark.requires_root("needs root and unshare")
def test_process_in_another_pid_namespace_shares_exactly():
    """A memfd inherited by a process inside `unshare --pid`: from the host both holders are
    seen under their host pids, one buffer split in two; from inside, the namespace's own
    view is exact too."""
    if not shutil.which("unshare"):
        pytest.skip("needs root and unshare")
    fd = os.memfd_create("pidns shared")
    os.ftruncate(fd, 65536)
    ino = os.fstat(fd).st_ino
    src = os.path.dirname(os.path.dirname(memtrack.__file__))
    inner = ("import os,sys,json,subprocess\n"
             f"os.environ['PYTHONPATH']={src!r}\n"
             "r=subprocess.run([sys.executable,'-m','memtrack','--json','-q'],capture_output=True,text=True)\n"
             "print(json.dumps({'pid':os.getpid(),'rc':r.returncode,'err':r.stderr,'doc':json.loads(r.stdout or 'null')}),flush=True)\n"
             "sys.stdin.read()\n")
    p = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", inner],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, pass_fds=(fd,))
    try:
        seen = json.loads(p.stdout.readline())
        # from the host: find the holder by the buffer, under its host pid
        snap = memtrack.scan()
    finally:
        stop(p)
        os.close(fd)
    assert seen["pid"] == 1 and seen["rc"] == 0, seen["err"]
    inside = seen["doc"]
    ib = [b for b in inside["buffers"] if b["kind"] == "memfd" and b["inode"] == ino]
    assert ib and ib[0]["size"] == 65536 and ib[0]["holders"] == [1]
    b = [b for b in snap.buffers if b.kind == "memfd" and b.inode == ino]
    assert len(b) == 1 and b[0].size == 65536 and os.getpid() in b[0].holders
    assert len(b[0].holders) >= 2                       # us, unshare and its child in the namespace
    acct = account(snap)
    assert sum(acct.shares[b[0].id].values()) == 65536
    assert acct.total.pss == acct.held_bytes


def test_zombie_as_root_is_not_a_holder_and_not_skipped():
    fd = os.memfd_create("zombie parent")
    os.ftruncate(fd, 12288)
    z = os.fork()
    if z == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10          # 200 sched_yields were not always enough
        while True:
            with open(f"/proc/{z}/status") as f:
                if "State:\tZ" in f.read():
                    break
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.001)
        snap = memtrack.scan(pids=[os.getpid(), z])
        r = run_memtrack("show", str(z), "-q")
    finally:
        os.waitpid(z, 0)
        os.close(fd)
    assert z not in snap.process_map and z not in snap.skipped.denied + snap.skipped.unreadable
    me = account(snap).processes[os.getpid()].total
    ours = [b for b in snap.buffers if b.name == "zombie parent"]
    assert ours and ours[0].holders == (os.getpid(),) and me.rss >= 12288
    assert r.returncode == 0 and "holds no shared buffers" in r.stdout


KCMP_CHECK = r"""
import errno, json, os, sys
from memtrack.bpf_policy import kcmp_gate
gate = kcmp_gate()
out = {"gate": gate is not None, "both": 0, "denied": 0, "fast_denied": 0, "wrong": []}
for n in os.listdir("/proc"):
    if not n.isdigit():
        continue
    pid = int(n)
    try:
        os.readlink("/proc/%d/exe" % pid)
        denied = False
    except OSError as exc:
        denied = exc.errno in (errno.EACCES, errno.EPERM)
    if gate is None:
        continue
    fast = gate(pid)
    out["both"] += 1
    out["denied"] += denied
    out["fast_denied"] += not fast
    if fast and denied:
        out["wrong"].append(pid)
print(json.dumps(out))
"""


# what kcmp_gate needs besides the ptrace check: to list every /proc/PID/fd, and to list
# the BPF programs (whether an LSM one is loaded)
CAPS = ["--inh-caps=+dac_read_search,+sys_admin", "--ambient-caps=+dac_read_search,+sys_admin"]


@pytest.mark.requires_root("needs root to compare both users")
@pytest.mark.parametrize("who", ["root", "nobody", "nobody+caps"])
def test_kcmp_gate_never_passes_what_proc_denies(who, nobody_pkg):
    """The bpf backend's access check takes a kcmp(2) pass as /proc's: over every process,
    as root and as an unprivileged user who may list every /proc/PID/fd and the BPF
    programs (CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN) but is denied root's processes by the
    ptrace check, no process kcmp lets through is one whose /proc/PID/exe link is refused,
    and every refusal is seen. Plain nobody gets no kcmp at all: kcmp has no DAC check on
    /proc/PID/fd, and nobody cannot tell whether a BPF LSM program is loaded."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE)          # a root process nobody may not read
    try:
        cmd = [sys.executable, "-c", KCMP_CHECK]
        if who.startswith("nobody"):
            cmd = DROP + (CAPS if who == "nobody+caps" else []) + cmd
        env = dict(os.environ, PYTHONPATH=nobody_pkg)
        got = json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=nobody_pkg,
                                        check=True, timeout=60).stdout)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    if who == "nobody":
        assert got["gate"] is False
        return
    if not got["gate"]:
        pytest.skip("kcmp cannot stand in for /proc's check here")
    assert got["both"] > 10 and got["wrong"] == []
    assert got["fast_denied"] >= got["denied"]
    if who == "nobody+caps":
        assert got["denied"] >= 1


def test_kcmp_gate_refused_where_the_checks_differ():
    """No kcmp fast path where REALCREDS and FSCREDS could decide differently, or on a
    machine whose kcmp number is not known."""
    from memtrack.bpf_policy import kcmp_gate, status_fields
    st = status_fields()
    if kcmp_gate(st) is None:
        pytest.skip("kcmp cannot stand in for /proc's check here")
    assert kcmp_gate(st)(os.getpid()) is True
    assert kcmp_gate(st)(2 ** 22 + 1) is False                       # no such pid
    uid = st["Uid"].split()
    assert kcmp_gate(dict(st, Uid=" ".join(uid[:3] + [str(int(uid[3]) + 1)]))) is None
    gid = st["Gid"].split()
    assert kcmp_gate(dict(st, Gid=" ".join(gid[:3] + [str(int(gid[3]) + 1)]))) is None
    eff = int(st["CapEff"], 16)
    spare = next(b for b in range(64) if not eff >> b & 1)
    assert kcmp_gate(dict(st, CapPrm="%016x" % (eff | 1 << spare))) is None
    assert kcmp_gate(st, machine="sparc64") is None
    assert kcmp_gate({}) is None


# prefixed to the child scripts below: capset(2) on the calling thread only
LOWER = r"""
import ctypes
def lower_effective(*caps):
    # drop caps from this thread's effective set, keeping them permitted
    libc = ctypes.CDLL(None, use_errno=True)
    class Hdr(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("eff", ctypes.c_uint32), ("prm", ctypes.c_uint32), ("inh", ctypes.c_uint32)]
    h = Hdr(0x20080522, 0)
    d = (Data * 2)()
    assert libc.capget(ctypes.byref(h), d) == 0
    for c in caps:
        d[0].eff &= ~(1 << c)
    assert libc.capset(ctypes.byref(h), d) == 0
"""


CAPDROP = LOWER + r"""
import ctypes, json, subprocess, sys
from memtrack import bpf as mbpf
from memtrack.bpf import access
from memtrack.bpf_policy import kcmp_gate
child = subprocess.Popen([sys.executable, "-c", "import os, sys; f = os.memfd_create('capdrop'); sys.stdin.read()"],
                         stdin=subprocess.PIPE)
import time; time.sleep(0.3)
scanner = None if mbpf.unavailable() else mbpf.BpfScanner(reuse=True)
out = {"before": access.gate(child.pid), "gate_before": kcmp_gate() is not None}
if scanner is not None:
    out["scan_before"] = child.pid in scanner.scan(pids=[child.pid]).skipped.denied
lower_effective(19, 1, 2)   # CAP_SYS_PTRACE, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
out.update(after=access.gate(child.pid), gate_after=kcmp_gate() is not None)
if scanner is not None:
    out["scan_after"] = child.pid in scanner.scan(pids=[child.pid]).skipped.denied
child.stdin.close(); child.wait()
print(json.dumps(out))
"""


@pytest.mark.requires_root("needs root")
def test_kcmp_gate_follows_the_callers_credentials_as_they_change():
    """kcmp stands in for /proc's check only on the credentials of the moment: a process
    that lowers its effective capabilities (keeping them permitted) is refused by /proc,
    and the gate, and a scan by a scanner loaded before the change, say so too."""
    from livehelpers import SRC
    got = json.loads(subprocess.run([sys.executable, "-c", CAPDROP], capture_output=True, text=True,
                                    env=dict(os.environ, PYTHONPATH=SRC), check=True,
                                    timeout=60).stdout)
    assert got["before"] is None and got["after"] == "denied"
    assert got["gate_after"] is False
    if "scan_before" in got:
        assert got["scan_before"] is False and got["scan_after"] is True


def test_no_kcmp_where_a_labelling_lsm_could_refuse_the_link():
    """/proc's link goes through the LSMs' inode hooks, kcmp does not: no kcmp under SELinux,
    Smack or TOMOYO, or for a process confined by a label; none where nothing can be told."""
    from memtrack.bpf_policy import kcmp_gate, mac_problem
    assert not mac_problem("capability,yama,landlock,bpf", None, False)
    assert not mac_problem("lockdown,capability,landlock,yama,apparmor,bpf", "unconfined\n", False)
    assert mac_problem("lockdown,capability,landlock,yama,apparmor,bpf", "snap.foo (enforce)\n", False)
    assert mac_problem("capability,selinux,bpf", "unconfined_u:unconfined_r:unconfined_t:s0", False)
    assert mac_problem("capability,smack", None, False)
    assert mac_problem("capability,tomoyo", None, False)
    assert not mac_problem(None, None, False)            # securityfs unread, no label: none
    assert mac_problem(None, None, True)                 # selinuxfs mounted
    assert mac_problem(None, "system_u:system_r:init_t:s0", False)
    assert kcmp_gate(mac="capability,selinux") is None
    # without securityfs (a container), the kernel command line's lsm= or security=
    from memtrack.bpf_policy import boot_lsms
    assert boot_lsms("quiet security=tomoyo") == "tomoyo"
    assert boot_lsms("lsm=capability,selinux ro security=apparmor") == "capability,selinux"
    assert boot_lsms("console=ttyS0 quiet -- lsm=selinux") is None     # init's arguments
    assert boot_lsms("") is None
    assert mac_problem(boot_lsms("security=tomoyo"), None, False)
    # a BPF LSM program may refuse on the way to the link too; unknown counts as one
    assert not mac_problem("capability,landlock,bpf", None, False, 0)
    assert mac_problem("capability,landlock,bpf", None, False, 2)
    assert mac_problem("capability,landlock,bpf", None, False, None)


def test_lsm_programs_are_counted(nobody_pkg):
    """The BPF LSM check lists the loaded programs: a count as root, None where they cannot
    be listed (no CAP_SYS_ADMIN)."""
    from memtrack._libbpf import available
    from memtrack.bpf_policy import lsm_programs
    if os.geteuid() != 0 or available():
        pytest.skip("needs root and libbpf")
    assert isinstance(lsm_programs(), int) and lsm_programs() >= 0
    # the links are read too (fmod_ret ones count): this scanner's own iterator links are
    # listed, as BPF_LINK_TYPE_ITER (4), and not counted
    from memtrack import bpf as mbpf
    from memtrack._libbpf import bpf_infos
    code = "from memtrack.bpf_policy import lsm_programs; print(lsm_programs())"
    out = subprocess.run(DROP + [sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, PYTHONPATH=nobody_pkg), cwd=nobody_pkg,
                         check=True).stdout
    assert out.strip() == "None"
    before = lsm_programs()
    if not mbpf.unavailable():
        with mbpf.BpfScanner():
            links = bpf_infos("link", 5)
            assert sum(i[0] == 4 for i in links) >= 3
            assert lsm_programs() == before


HOLDER = ("import os, sys; f = os.memfd_create('rights-holder'); os.ftruncate(f, 8192); "
          "print(os.getpid(), flush=True); sys.stdin.read()")


def _holder(prefix=()):
    p = subprocess.Popen(list(prefix) + [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert int(p.stdout.readline()) == p.pid
    return p


def _release(*procs):
    for p in procs:
        p.stdin.close()
        p.wait(timeout=30)


@pytest.mark.requires_root("needs root and setpriv")
def test_bpf_backend_without_dac_capabilities_shows_what_procfs_shows(nobody_pkg):
    """Root without CAP_DAC_READ_SEARCH and CAP_DAC_OVERRIDE (dropped from the bounding set:
    neither effective nor permitted) cannot list another user's /proc/PID/fd (mode 0500),
    though the ptrace check passes: procfs counts that process denied, and so must the bpf
    backend, whose iterators see it and whose kcmp check has no DAC step. Its own user's
    process stays readable."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    from memtrack.bpf import unavailable
    if unavailable():
        pytest.skip("bpf backend unavailable: " + unavailable())
    other, mine = _holder(DROP), _holder()     # nobody_pkg: a skip where nobody cannot run python
    try:
        got = {}
        for backend in ("procfs", "bpf"):
            r = run_memtrack("--json", "-q", "--backend", backend, "-p", f"{other.pid},{mine.pid}",
                             env_extra={"MEMTRACK_PRELOAD": "0"}, timeout=120,
                             prefix=["setpriv", "--bounding-set=-dac_override,-dac_read_search"])
            assert r.returncode == 0, r.stderr
            doc = json.loads(r.stdout)
            assert doc["backend"] == backend
            ours = {other.pid, mine.pid}
            got[backend] = ({p["pid"] for p in doc["processes"]} & ours,
                            set(doc["skipped"]["denied"]) & ours)
    finally:
        _release(other, mine)
    assert got["procfs"] == ({mine.pid}, {other.pid})
    assert got["bpf"] == got["procfs"]


THREAD = LOWER + r"""
import ctypes, json, subprocess, sys, threading
from memtrack.bpf import BpfScanner
from memtrack.procfs import scan
from memtrack.sources.live import LiveSource
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
child.stdout.readline()
out = {}
def cap_line(path):
    return [l.split()[1] for l in open(path) if l.startswith(("CapEff", "CapPrm"))]
def denied(snap):
    return child.pid in snap.skipped.denied and child.pid not in snap.process_map
lowered = threading.Event()
stop = threading.Event()
def full():                      # a thread keeping its rights, scanning all along
    s = BpfScanner(reuse=False)
    lowered.wait()
    n = 0
    while not stop.is_set():
        n += not denied(s.scan(pids=[child.pid]))
    out["full thread saw it"] = n
def low():
    scanners = {r: BpfScanner(reuse=r) for r in (False, True)}     # opened with full rights
    out["before"] = [denied(scanners[r].scan(pids=[child.pid])) for r in (False, True)]
    lower_effective(19)          # CAP_SYS_PTRACE, this thread only
    out["leader"], out["thread"] = cap_line("/proc/self/status"), cap_line("/proc/thread-self/status")
    lowered.set()
    out["after"] = [all(denied(scanners[r].scan(pids=[child.pid])) for _ in range(15))
                    for r in (False, True)]
    out["procfs"] = denied(scan(LiveSource(), pids=[child.pid]))
    stop.set()
threads = [threading.Thread(target=f) for f in (full, low)]
for t in threads: t.start()
for t in threads: t.join()
child.stdin.close(); child.wait()
print(json.dumps(out))
"""


@pytest.mark.requires_root("needs root")
def test_access_check_is_the_scanning_threads():
    """Credentials are per thread: a thread that lowers its own effective capabilities
    (capset) is refused by /proc what the leader may read. Its scans, by scanners opened
    before the change (one-shot and reused), say so too, while another thread with full
    rights scans beside it and still reads that process: neither thread's check is the
    other's, nor the leader's (/proc/self/status)."""
    from memtrack.bpf import unavailable
    if unavailable():
        pytest.skip("bpf backend unavailable: " + unavailable())
    from livehelpers import SRC
    got = json.loads(subprocess.run([sys.executable, "-c", THREAD, HOLDER], capture_output=True,
                                    text=True, env=dict(os.environ, PYTHONPATH=SRC), check=True,
                                    timeout=120).stdout)
    assert got["leader"][0] == got["leader"][1] and got["thread"][0] != got["thread"][1]
    assert got["before"] == [False, False]
    assert got["procfs"] is True
    assert got["after"] == [True, True]
    assert got["full thread saw it"] > 0


@pytest.mark.requires_root("needs root")
def test_a_confined_caller_is_checked_as_procfs_lists(monkeypatch):
    """Under a MAC module the scan's access check neither takes kcmp nor a readlink of
    /proc/PID/exe alone: it also opens /proc/PID/fd, as procfs lists it (a policy may judge
    the directory apart from the link). Unconfined root takes the readlink (or kcmp)."""
    from memtrack import bpf as mbpf
    from memtrack.bpf import access
    if mbpf.unavailable():
        pytest.skip("bpf backend unavailable: " + mbpf.unavailable())
    scanner = mbpf.BpfScanner(reuse=False)
    try:
        seen = []
        for facts in ((None, None, False, 0), (None, "confined_t (enforce)", False, 0),
                      ("capability,selinux", None, False, 0), (None, None, False, 1)):
            monkeypatch.setattr(access, "mac_facts", lambda facts=facts: facts)
            scanner._as_caller()
            seen.append((access.caller.fast is None, access.caller.exe_only))
            assert access.gate(os.getpid()) is None
            access.caller.fast = access.caller.exe_only = access.caller.scanning = False
    finally:
        scanner.close()
    assert seen[0][1] is True
    assert seen[1:] == [(True, False)] * 3


def _kthread():
    """A kernel thread's pid (flags PF_KTHREAD in /proc/PID/stat), or None."""
    for n in sorted(os.listdir("/proc"), key=lambda n: int(n) if n.isdigit() else 0):
        if n.isdigit():
            try:
                with open(f"/proc/{n}/stat", "rb") as f:
                    st = f.read()
            except OSError:
                continue
            if int(st[st.rfind(b")") + 2:].split()[6]) & 0x00200000:
                return int(n)
    return None


def _zombie():
    """An unreaped child of this process: (Popen, pid) once its state is Z."""
    z = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while True:
        with open(f"/proc/{z.pid}/stat", "rb") as f:
            st = f.read()
        if st[st.rfind(b")") + 2:].split()[0] == b"Z":
            return z
        assert time.monotonic() < deadline, "the child never became a zombie"
        time.sleep(0.001)


BPF_CAPS = "+sys_ptrace,+sys_admin,+bpf,+perfmon"


@pytest.mark.requires_root("needs root")
def test_unprivileged_bpf_caller_is_refused_what_procfs_is(nobody_pkg):
    """A non-root caller given the bpf backend's capabilities (no DAC ones) may load the
    iterators, which see everything; /proc refuses it every /proc/PID/fd it does not own,
    a kernel thread's and root's included, and procfs counts those denied. The bpf backend
    counts the same: denied the same processes, a zombie in neither list, its own user's
    process shown."""
    from memtrack.bpf import unavailable
    if unavailable():
        pytest.skip("bpf backend unavailable: " + unavailable())
    kt = _kthread()
    if kt is None:
        pytest.skip("no kernel thread visible here")
    caps = [f"--inh-caps={BPF_CAPS}", f"--ambient-caps={BPF_CAPS}"]
    root, mine = _holder(), _holder(DROP)
    z = _zombie()
    try:
        pids = ",".join(str(p) for p in (kt, z.pid, root.pid, mine.pid))
        got = {}
        for backend in ("procfs", "bpf"):
            r = subprocess.run(DROP + caps + [sys.executable, "-m", "memtrack", "--json", "-q",
                                              "--backend", backend, "-p", pids],
                               capture_output=True, text=True, timeout=120, cwd=nobody_pkg,
                               env=dict(os.environ, PYTHONPATH=nobody_pkg))
            assert r.returncode == 0, r.stderr
            doc = json.loads(r.stdout)
            assert doc["backend"] == backend
            ours = {kt, z.pid, root.pid, mine.pid}      # (the others come and go: kworkers)
            got[backend] = ({p["pid"] for p in doc["processes"]} & ours,
                            set(doc["skipped"]["denied"]) & ours)
    finally:
        _release(root, mine)
        z.wait()
    assert got["procfs"] == ({mine.pid}, {kt, root.pid})
    assert got["bpf"] == got["procfs"]


LOWERED = LOWER + r"""
import ctypes, json, sys
from memtrack.bpf import BpfScanner
from memtrack.procfs import scan
from memtrack.sources.live import LiveSource
pids = [int(p) for p in sys.argv[1:]]
scanners = [BpfScanner(reuse=False), BpfScanner(reuse=True)]
lower_effective(19)              # CAP_SYS_PTRACE
def seen(snap):
    return [sorted(snap.process_map), sorted(snap.skipped.denied)]
out = {"procfs": seen(scan(LiveSource(), pids=pids))}
out["bpf"] = [seen(s.scan(pids=pids)) for s in scanners]
print(json.dumps(out))
"""


@pytest.mark.requires_root("needs root")
def test_a_caller_without_ptrace_rights_is_refused_what_procfs_is(nobody_pkg):
    """Root that lowers CAP_SYS_PTRACE (after opening its scanners) is refused the ptrace
    check on root's and other users' processes, and procfs counts them denied; it is not
    refused a kernel thread or a zombie, which have no fd or mm for procfs to check. The
    bpf backend, one-shot and reused, counts the same."""
    from memtrack.bpf import unavailable
    if unavailable():
        pytest.skip("bpf backend unavailable: " + unavailable())
    kt = _kthread()
    if kt is None:
        pytest.skip("no kernel thread visible here")
    from livehelpers import SRC
    root, other = _holder(), _holder(DROP)
    z = _zombie()
    try:
        pids = [str(p) for p in (kt, z.pid, root.pid, other.pid)]
        got = json.loads(subprocess.run([sys.executable, "-c", LOWERED, *pids], capture_output=True,
                                        text=True, env=dict(os.environ, PYTHONPATH=SRC), check=True,
                                        timeout=120).stdout)
    finally:
        _release(root, other)
        z.wait()
    assert got["procfs"] == [[], sorted([root.pid, other.pid])]
    assert got["bpf"] == [got["procfs"]] * 2


SHARED = LOWER + r"""
import ctypes, json, sys, threading, time
from memtrack.bpf import BpfScanner
target = int(sys.argv[1])
scanner = BpfScanner(reuse=True)
out = {"full": [0, 0], "low": [0, 0]}
stop = threading.Event()
lowered = threading.Event()
def count(who):
    snap = scanner.scan(pids=[target])
    out[who][0] += 1
    out[who][1] += target in snap.process_map
def full():
    lowered.wait()
    while not stop.is_set():
        count("full")
def low():
    lower_effective(1, 2)               # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: this thread's
    lowered.set()
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        count("low")
    stop.set()
threads = [threading.Thread(target=f) for f in (full, low)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""


@pytest.mark.requires_root("needs root")
def test_one_reused_scanner_scanned_from_two_threads(nobody_pkg):
    """A reused scanner carries verdicts and its last snapshot from scan to scan; shared by
    a thread with full rights and one that lowered its DAC capabilities, scanning at once,
    each thread's scans say what /proc lets that thread read: the lowered one never sees
    another user's process, the other always does."""
    from memtrack.bpf import unavailable
    if unavailable():
        pytest.skip("bpf backend unavailable: " + unavailable())
    from livehelpers import SRC
    other = _holder(DROP)
    try:
        got = json.loads(subprocess.run([sys.executable, "-c", SHARED, str(other.pid)],
                                        capture_output=True, text=True, check=True, timeout=120,
                                        env=dict(os.environ, PYTHONPATH=SRC)).stdout)
    finally:
        _release(other)
    # (the lock is not fair: the full thread may get its turns only between the other's)
    assert got["low"][0] > 5 and got["full"][0] >= 1
    assert got["low"][1] == 0
    assert got["full"][1] == got["full"][0]
