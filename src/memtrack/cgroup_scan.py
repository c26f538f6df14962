"""Reading cgroups during a scan: each process's cgroup (/proc/PID/cgroup) and, for the
cgroups seen, what the memory controller charged them (memory.stat, dmem.*). Every read
goes through the source, so a capture records these files and reads them back."""
from __future__ import annotations

from typing import Optional

from .cgroups import cgroup_dir, parse_dmem, parse_memory_stat, parse_proc_cgroup, safe_path
from .errors import ProcessGone


def note_cgroup(obs, text: str) -> Optional[str]:
    """The cgroup path /proc/PID/cgroup's text gives, its hierarchy kept in obs."""
    got = parse_proc_cgroup(text)
    if got is None:
        return None
    path, hier = got
    obs.cgroup_hier[path] = hier
    return path


def process_cgroup(p, obs) -> Optional[str]:
    """A process's memory cgroup path, or None where its cgroup file is missing (a capture
    from before cgroups were recorded, a kernel without them): never fatal."""
    try:
        text = p.cgroup()
    except (ProcessGone, NotImplementedError):
        return None
    return note_cgroup(obs, text)


def read_charges(src, obs, procs=None) -> None:
    """model.CgroupInfo for each cgroup of procs (default obs.procs), sorted by path. A cgroup removed since
    (or not captured) has no memory.stat: it is left out, and the table says nothing of it."""
    from .model import CgroupInfo
    out = []
    procs = obs.procs if procs is None else procs
    for path in sorted({pi.cgroup for pi in procs if pi.cgroup is not None}):
        hier = obs.cgroup_hier.get(path)
        if hier is None or not safe_path(path):
            continue
        d = cgroup_dir(path, hier)
        try:
            stat = parse_memory_stat(src.read_text(d + "/memory.stat"), hier)
        except ProcessGone:
            continue
        cur, mx = {}, {}
        if hier == "v2":                    # dmem is a v2-only controller
            try:
                cur = {k: v for k, v in parse_dmem(src.read_text(d + "/dmem.current")).items()
                       if v is not None}
                mx = parse_dmem(src.read_text(d + "/dmem.max"))
            except ProcessGone:
                pass                        # no dmem controller here (before 6.14, or not enabled)
        out.append(CgroupInfo(path, hier, stat, cur, mx))
    obs.cgroups = out
