"""Who may use the bpf backend, and when its access check may take kcmp(2)'s word: this
thread's credentials, the security modules (LSMs) and BPF LSM programs that could refuse a
/proc link the ptrace check allows, and the rest of what unavailable() checks.

Standard library and _libbpf only, outside the bpf package (whose import brings the
scanner): memtrack._preload's thread calls unavailable() while the CLI imports the rest.
"""
from __future__ import annotations

import ctypes
import os

from ._libbpf import BTF, OBJECT, available, bpf_infos, kernel_version

CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF, CAP_CHECKPOINT_RESTORE = 19, 21, 38, 39, 40
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
BPF_PROG_TYPE_LSM = 29
BPF_LINK_TYPE_TRACING, BPF_MODIFY_RETURN = 2, 26


def status_fields() -> dict[str, str]:
    """The calling thread's /proc status: credentials are per thread (capset(2), and
    setfsuid or setresuid made as system calls, change one thread's), and /proc/self shows
    the thread group leader's. /proc/self on kernels before 3.17, which lack thread-self."""
    out = {}
    try:
        f = open("/proc/thread-self/status")
    except FileNotFoundError:
        f = open("/proc/self/status")
    with f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


# kcmp(2) by (uname machine, pointer size): only where the number is certain, since a
# wrong one would be some other system call; elsewhere the gate keeps to readlink
_KCMP_NR = {("x86_64", 8): 312, ("aarch64", 8): 272, ("riscv64", 8): 272,
            ("loongarch64", 8): 272, ("armv7l", 4): 378, ("armv8l", 4): 378,
            ("aarch64", 4): 378}
KCMP_VM = 1


def own_creds(status: dict[str, str] | None = None) -> tuple:
    """What of this thread's credentials /proc's access check looks at: ids, capabilities."""
    try:
        st = status if status is not None else status_fields()
    except OSError:
        return ()
    return tuple(st.get(k) for k in ("Uid", "Gid", "Groups", "CapEff", "CapPrm"))


def reads_every_fd_dir(status: dict[str, str]) -> bool:
    """Whether DAC lets this thread list every /proc/PID/fd (mode 0500, owned by the task's
    user): CAP_DAC_READ_SEARCH or CAP_DAC_OVERRIDE effective. Without either, procfs cannot
    list another user's fds, which the ptrace check behind /proc/PID/exe and kcmp(2) does
    not see: the bpf backend's access check then opens /proc/PID/fd itself."""
    try:
        caps = int(status["CapEff"], 16)
    except (KeyError, ValueError):
        return False
    return bool(caps >> CAP_DAC_READ_SEARCH & 1 or caps >> CAP_DAC_OVERRIDE & 1)


def kcmp_gate(status: dict[str, str] | None = None, machine: str | None = None,
              mac: str | tuple | None = "read"):
    """f(pid) -> True when the kernel's ptrace read check lets this process read pid, in one
    system call with no path to walk (kcmp(2) KCMP_VM, about a third of a readlink of
    /proc/PID/exe); False means "ask /proc" (denied, gone, or kcmp refused), never "denied".
    Made again for every scan: what it rests on is this process's credentials now.

    kcmp checks ptrace_may_access(PTRACE_MODE_READ_REALCREDS) where /proc's links check
    PTRACE_MODE_READ_FSCREDS. The two decide alike (the same uid/gid comparison, capability
    and LSM ptrace hooks, which look only at READ) when this thread's fs ids are its real
    ids and its permitted capabilities its effective ones (commoncap compares the target's
    permitted set with the caller's permitted set for REALCREDS, effective for FSCREDS).
    status: this thread's (status_fields), since kcmp runs on the calling thread's.
    /proc also checks DAC on /proc/PID/fd, which kcmp does not: no kcmp where that could
    refuse (reads_every_fd_dir). And it asks the LSMs' inode and file hooks on the way, which
    kcmp does not: no kcmp where a labelling LSM or a BPF LSM program could refuse there
    (mac_problem; mac: "read" to look, mac_facts() already read, or an LSM list to take
    with no label and no BPF LSM program). None where any of this does not
    hold, the number is not known, or kcmp on itself fails (seccomp, CONFIG_KCMP off)."""
    try:
        st = status if status is not None else status_fields()
        uid, gid = st["Uid"].split(), st["Gid"].split()
        if uid[0] != uid[3] or gid[0] != gid[3] or st["CapEff"] != st["CapPrm"]:
            return None
    except (OSError, KeyError, IndexError):
        return None
    if not reads_every_fd_dir(st):
        return None
    facts = mac_facts() if mac == "read" else mac if isinstance(mac, tuple) else (mac, None, False, 0)
    if mac_problem(*facts):
        return None
    got = _kcmp_call(machine)
    if got is None:
        return None
    syscall, nr = got
    me = os.getpid()
    if syscall(nr, me, me, KCMP_VM) != 0:
        return None

    def readable(pid: int) -> bool:
        return syscall(nr, me, pid, KCMP_VM) >= 0
    return readable


_kcmp_cache: dict = {}


def _kcmp_call(machine: str | None = None):
    """(libc's syscall, kcmp's number) for this machine, or None; set up once."""
    key = (machine or os.uname().machine, ctypes.sizeof(ctypes.c_void_p))
    if key not in _kcmp_cache:
        nr = _KCMP_NR.get(key)
        got = None
        if nr is not None:
            try:
                syscall = ctypes.CDLL(None, use_errno=True).syscall
                syscall.restype = ctypes.c_long
                syscall.argtypes = [ctypes.c_long] * 4
                got = (syscall, nr)
            except (OSError, AttributeError):
                got = None
        _kcmp_cache[key] = got
    return _kcmp_cache[key]


# LSMs whose inode hooks can refuse /proc/PID/exe to a process its ptrace check lets through
_INODE_MACS = ("selinux", "smack", "tomoyo")


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def mac_facts():
    """(the active LSMs, comma-separated, or None where securityfs cannot be read; this
    thread's label, or None where no LSM gives one; whether selinuxfs is there; how many
    BPF LSM programs are loaded, or None where that cannot be told)."""
    label = None
    for base in ("/proc/thread-self/attr/", "/proc/self/attr/"):    # an AppArmor hat: per thread
        label = _read_text(base + "apparmor/current")
        if label is None:
            label = _read_text(base + "current")
        if label is not None or os.path.isdir(base):
            break
    lsms = _read_text("/sys/kernel/security/lsm")
    if lsms is None:                    # securityfs not mounted (a container): what boot said
        lsms = boot_lsms(_read_text("/proc/cmdline") or "")
    return lsms, label, os.path.isdir("/sys/fs/selinux"), lsm_programs()


def boot_lsms(cmdline: str) -> str | None:
    """The LSMs the kernel command line enables, where it names them: lsm= (the whole list;
    the last one given) or the older security= (the one major module it picks, which is
    what matters here); None where it says nothing (the kernel's built-in list)."""
    lsm = security = None
    for word in cmdline.split(" -- ")[0].split():
        if word.startswith("lsm="):
            lsm = word[4:]
        elif word.startswith("security="):
            security = word[9:]
    return lsm if lsm is not None else security


def lsm_programs() -> int | None:
    """How many BPF programs may refuse what a hook on the way to a /proc link sees: those
    of type LSM, and fmod_ret links (BPF_MODIFY_RETURN, which may attach to security_*
    functions and error-injectable ones). None where they cannot be listed (no
    CAP_SYS_ADMIN, no libbpf)."""
    if available() is not None:         # no libbpf
        return None
    progs = bpf_infos("prog", 1)
    # struct bpf_link_info: type, id, prog_id, then (8-aligned) tracing.attach_type
    links = bpf_infos("link", 5)
    if progs is None or links is None:
        return None
    return (sum(i[0] == BPF_PROG_TYPE_LSM for i in progs)
            + sum(i[0] == BPF_LINK_TYPE_TRACING and i[4] == BPF_MODIFY_RETURN for i in links))


def mac_problem(lsms: str | None, label: str | None, selinuxfs: bool,
                lsm_progs: int | None = 0) -> bool:
    """True where a mandatory access control module could refuse this thread a /proc link
    that the ptrace check allows: SELinux, Smack or TOMOYO active, this thread confined by
    a label (AppArmor's profiles mediate paths), or a BPF LSM program loaded (lsm_progs;
    None: unknown). Unknown counts as a problem, except that a kernel with no labelling LSM
    answers the label read with an error."""
    if lsm_progs is None or lsm_progs > 0:
        return True
    unconfined = label is None or label.strip("\0\n ") in ("", "unconfined")
    if lsms is not None:
        names = {n.strip() for n in lsms.split(",")}
        return bool(names & set(_INODE_MACS)) or not unconfined
    return selinuxfs or not unconfined


PROC_PID_INIT_INO = 0xEFFFFFFC      # the initial pid namespace's inode number (fixed since 3.8)


def _in_child_pid_ns() -> bool:
    """NSpid only shows the levels the mounted /proc knows: with `unshare --pid
    --mount-proc` it reads like the host's. The namespace inode does not lie."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino != PROC_PID_INIT_INO
    except OSError:
        return True


def rights_problem() -> str | None:
    """None when the caller may use the iterators without seeing more than procfs shows."""
    try:
        st = status_fields()
        caps = int(st.get("CapEff", "0"), 16)
    except (OSError, ValueError):
        return "cannot read this process's capabilities (/proc/self/status)"

    def has(c):
        return bool(caps >> c & 1)
    can_load = has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))
    sees_all = has(CAP_SYS_PTRACE) and (has(CAP_SYS_ADMIN) or has(CAP_CHECKPOINT_RESTORE))
    if not (can_load and sees_all):
        return ("needs root: loading BPF needs CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN), and the "
                "iterators see every process, so memtrack also requires CAP_SYS_PTRACE and "
                "CAP_SYS_ADMIN, the rights that let procfs read them all")
    if len(st.get("NSpid", "").split()) > 1 or _in_child_pid_ns():
        return "runs in a pid namespace: the iterators report pids /proc here does not use"
    return None


def unavailable(obj: str = OBJECT) -> str | None:
    """Why the bpf backend cannot run (rights, libbpf, BTF, object), or None; the kernel's
    own refusal is only known by loading (BpfScanner raises BpfUnavailable)."""
    why = rights_problem()
    if why:
        return why
    why = available()
    if why:
        return why
    if not os.path.exists(BTF):
        return f"no kernel BTF ({BTF}): the kernel was built without CONFIG_DEBUG_INFO_BTF"
    if kernel_version() < (5, 12):
        return "kernel too old: BPF task_vma iterators need Linux >= 5.12"
    if not os.path.exists(obj):
        return f"the BPF object is not installed ({obj})"
    return None
