"""GPU (DRM GEM) accounting: pure functions of a Snapshot's "gpu" section.

GEM memory is per client, not per buffer, and a GEM object exported as a dma-buf is counted
by DRM (as shared) and by the dma-buf tables: nothing here is ever added to buffer totals.
A client held by several processes (dup'd, inherited, passed fds) counts once; its private
resident memory is split among its holders like a buffer's pss.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from .account import pss_shares
from .model import GpuClient, Snapshot

STATS = ("total", "shared", "resident", "purgeable", "active")


def clients(snap: Snapshot) -> List[GpuClient]:
    """One entry per distinct client (the first holder's), in snapshot order."""
    seen, out = set(), []
    for g in snap.gpu:
        if g.key not in seen:
            seen.add(g.key)
            out.append(g)
    return out


def stat_sum(g: GpuClient, stat: str):
    """Sum of one stat over the client's regions; None when no region printed it."""
    vals = [r[stat] for r in g.regions.values() if stat in r]
    return sum(vals) if vals else None


def private_resident(g: GpuClient) -> int:
    """Resident bytes not shared with another client: resident - shared per region (shared
    objects may be resident or not; this is the part surely this client's alone)."""
    return sum(max(r.get("resident", 0) - r.get("shared", 0), 0) for r in g.regions.values())


def per_process(snap: Snapshot) -> Dict[int, int]:
    """pid -> its pss share of the private resident memory of the clients it holds."""
    out: Dict[int, int] = {}
    for g in clients(snap):
        for pid, n in pss_shares(private_resident(g), g.holders).items():
            out[pid] = out.get(pid, 0) + n
    return out


def device_totals(snap: Snapshot) -> Dict[Tuple[str, str], Dict[str, Dict[str, int]]]:
    """(driver, pdev or device) -> region -> stat -> bytes summed over distinct clients.
    An object shared between clients counts in each of them (the kernel gives no object ids)."""
    out: Dict[Tuple[str, str], Dict[str, Dict[str, int]]] = {}
    for g in clients(snap):
        dev = out.setdefault((g.driver, g.pdev or g.device or "?"), {})
        for region, vals in g.regions.items():
            acc = dev.setdefault(region, {})
            for k, v in vals.items():
                acc[k] = acc.get(k, 0) + v
    return out
