"""Cgroups: which cgroup a process is in, and the groupings their owners' naming gives
(systemd units, container ids, Kubernetes pods); what the memory controller charged a
cgroup. Pure functions of kernel text (stdlib only): the sources read the files.

A process's cgroup is the memory controller's: the v1 `N:...memory...:PATH` line of
/proc/PID/cgroup where memory is bound to a v1 hierarchy (v1 and hybrid machines), else
the v2 `0::PATH` line. The memory controller is bound to one hierarchy machine-wide, so
every process of a machine gives the same kind ("v1" or "v2").

Naming conventions (from their owners' documentation):
- systemd (systemd.unit(5), systemd.slice(5), systemd.scope(5)): each path component
  ending in .slice, .service or .scope is a unit; a process belongs to the innermost
  .service or .scope (its slice only if it is directly in one). A user's apps
  (app-firefox-1234.scope, app-gnome-foo@x.service under user@UID.service) are units of
  that user's manager: the innermost one is still the answer.
- docker: /docker/<id> (cgroupfs driver), /system.slice/docker-<id>.scope (systemd);
  containerd's CRI plugin: cri-containerd-<id>.scope, or a bare <id> under a pod;
  CRI-O: crio-<id>.scope or crio-<id> (crio-conmon-<id> is its monitor, not the container);
  podman: libpod-<id>.scope (systemd), /libpod_parent/libpod-<id> (cgroupfs);
  libpod-conmon-<id> is the monitor. <id> is 64 lowercase hex digits.
- Kubernetes (kubelet, both cgroup drivers): cgroupfs /kubepods/[burstable|besteffort/]
  pod<uid>/<container>; systemd /kubepods.slice/kubepods-<qos>.slice/
  kubepods-<qos>-pod<uid with _ for ->.slice/<runtime>-<id>.scope.
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

GROUPINGS = ("cgroup", "unit", "container", "pod")
UNKNOWN = "(unknown)"              # the process's cgroup could not be read
NO_GROUP = {"unit": "(no unit)", "container": "(host)", "pod": "(no pod)"}

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_UNIT_SUFFIXES = (".service", ".scope", ".slice")
# runtime prefix in a cgroup name -> the runtime, as Kubernetes writes it in containerID
_PREFIXED = (("docker-", "docker"), ("cri-containerd-", "containerd"), ("crio-", "cri-o"),
             ("libpod-", "podman"))
_MONITORS = ("crio-conmon-", "libpod-conmon-")
_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def parse_proc_cgroup(text: str) -> Optional[Tuple[str, str]]:
    """(path, "v1" | "v2") of the memory controller's cgroup from /proc/PID/cgroup, or None
    when the text names neither (no cgroup support, or garbage)."""
    v2 = None
    for line in text.split("\n"):
        hid, sep, rest = line.partition(":")
        ctrls, sep2, path = rest.partition(":")
        if not (sep and sep2) or not path.startswith("/"):
            continue
        if hid == "0" and ctrls == "":
            v2 = path
        elif "memory" in ctrls.split(","):
            return path, "v1"
    return (v2, "v2") if v2 is not None else None


def safe_path(path: str) -> bool:
    """Whether a cgroup path can be joined under a cgroup mount: absolute, no `..` (a
    process in a cgroup namespace sees its ancestors as `..`; a capture may hold anything)."""
    return path.startswith("/") and ".." not in path.split("/") and "\0" not in path


def _parts(path: str):
    return [p for p in path.split("/") if p]


def unit_of(path: str) -> Optional[str]:
    """The systemd unit a process in cgroup `path` belongs to: the innermost .service or
    .scope, else the innermost .slice; "-.slice" for the root cgroup; None where the path
    is not systemd's (a container runtime's cgroupfs paths, an orchestrator's own)."""
    parts = _parts(path)
    if not parts:
        return "-.slice"
    slice_ = None
    for p in reversed(parts):
        if p.endswith((".service", ".scope")):
            return p
        if slice_ is None and p.endswith(".slice"):
            slice_ = p
    return slice_


def _strip_unit(name: str) -> str:
    for suf in _UNIT_SUFFIXES:
        if name.endswith(suf):
            return name[:-len(suf)]
    return name


def container_of(path: str) -> Optional[str]:
    """The container a process in cgroup `path` runs in, as "<runtime>://<id>" (the form
    of Kubernetes' containerID) or the bare id where only the runtime's place says it is
    one (a 64-hex name under /docker or under a pod); None outside containers. The
    outermost container wins (one running systemd has cgroups of its own below it)."""
    parts = _parts(path)
    for i, p in enumerate(parts):
        name = _strip_unit(p)
        if name.startswith(_MONITORS):
            return None
        for prefix, runtime in _PREFIXED:
            if name.startswith(prefix) and _HEX64.match(name[len(prefix):]):
                return f"{runtime}://{name[len(prefix):]}"
        if _HEX64.match(name) and i > 0:
            parent = parts[i - 1]
            if parent == "docker":
                return f"docker://{name}"
            if _pod_part(parent) is not None:
                return name                 # cgroupfs kubelet: the runtime is not said
    return None


def _pod_part(p: str) -> Optional[str]:
    """The pod uid a kubelet cgroup name carries (pod<uid>, or kubepods[-qos]-pod<uid_>.slice)."""
    name = p
    if name.endswith(".slice"):
        name = name[:-6]
        if not name.startswith("kubepods-"):
            return None
        name = name.rsplit("-", 1)[-1].replace("_", "-")
    if name.startswith("pod") and _UID.match(name[3:]):
        return name[3:]
    return None


def pod_of(path: str) -> Optional[str]:
    """The uid of the Kubernetes pod a process in cgroup `path` belongs to, with dashes (as
    metadata.uid prints it), or None. Only below a kubepods cgroup."""
    parts = _parts(path)
    if not any(p == "kubepods" or p.startswith("kubepods.") or p.startswith("kubepods-") for p in parts):
        return None
    for p in parts:
        uid = _pod_part(p)
        if uid is not None:
            return uid
    return None


def group_key(cgroup: Optional[str], by: str) -> str:
    """A process's group under grouping `by`, from its cgroup path (None: unknown)."""
    if cgroup is None:
        return UNKNOWN
    if by == "cgroup":
        return cgroup
    if by == "unit":
        g = unit_of(cgroup)
    elif by == "container":
        g = container_of(cgroup)
    elif by == "pod":
        g = pod_of(cgroup)
    else:
        raise ValueError(f"cannot group by {by!r}")
    return g if g is not None else NO_GROUP[by]


# -- what the memory controller charged --------------------------------------------------

# memory.stat keys kept, by hierarchy -> the names memtrack gives them. v1's own figures
# are the cgroup's alone (total_* add its descendants); v2's already include descendants.
STAT_KEYS = {
    "v1": {"shmem": "shmem", "mapped_file": "file_mapped",
           "total_shmem": "total_shmem", "total_mapped_file": "total_file_mapped"},
    "v2": {"shmem": "shmem", "file_mapped": "file_mapped"},
}


def parse_memory_stat(text: str, hierarchy: str) -> Dict[str, int]:
    """The charged shared-memory figures of a memory.stat (bytes), under memtrack's names.
    Lines that are not `key number` are skipped."""
    keys = STAT_KEYS[hierarchy]
    out = {}
    for line in text.split("\n"):
        f = line.split()
        if len(f) == 2 and f[0] in keys and f[1].isascii() and f[1].isdigit() and len(f[1]) <= 20:
            n = int(f[1])
            if n < (1 << 64):
                out[keys[f[0]]] = n
    return out


def parse_dmem(text: str) -> Dict[str, Optional[int]]:
    """dmem.current / dmem.max (Linux 6.14+, cgroup v2): `region bytes` per line, "max"
    meaning no limit (None)."""
    out: Dict[str, Optional[int]] = {}
    for line in text.split("\n"):
        f = line.split()
        if len(f) != 2:
            continue
        if f[1] == "max":
            out[f[0]] = None
        elif f[1].isascii() and f[1].isdigit() and len(f[1]) <= 20 and int(f[1]) < (1 << 64):
            out[f[0]] = int(f[1])
    return out


def cgroup_dir(path: str, hierarchy: str) -> str:
    """Where a cgroup's files are, relative to / (the conventional mounts: v1 controllers
    under /sys/fs/cgroup/<controller>, the v2 hierarchy at /sys/fs/cgroup)."""
    base = "sys/fs/cgroup/memory" if hierarchy == "v1" else "sys/fs/cgroup"
    return base + path.rstrip("/")
