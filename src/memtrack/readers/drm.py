"""DRM client fdinfo (Documentation/gpu/drm-usage-stats.rst, drivers/gpu/drm/drm_file.c).

An open of /dev/dri/cardN or /dev/dri/renderDN is one struct drm_file, a "client". Its
fdinfo lists, after the generic pos/flags/mnt_id/ino lines, `key:<whitespace>value[ unit]`:
drm-driver, drm-pdev, drm-client-id, drm-client-name; memory per region as
drm-{total,shared,resident,purgeable,active}-<region> (legacy drm-memory-<region> is
resident); engine time as drm-engine-<e> (ns), drm-cycles-<e>, drm-total-cycles-<e>,
drm-engine-capacity-<e>, drm-maxfreq-<e>/drm-curfreq-<e>. Region and engine names may hold
dashes (i915 `stolen-system0`, `video-enhance`): the stat word is matched first.
"""
from __future__ import annotations

from typing import Dict, Optional

from .fd import parse_fdinfo

DRI_PREFIXES = ("/dev/dri/card", "/dev/dri/renderD")

_MEM_STATS = ("total", "shared", "resident", "purgeable", "active")
_SIZE_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_FREQ_UNITS = {"": 1, "Hz": 1, "KHz": 1000, "kHz": 1000, "MHz": 1000 ** 2, "GHz": 1000 ** 3}
# engine keys: (prefix, field); longer prefixes first so drm-engine-capacity- is not an engine
_ENGINE_KEYS = (("drm-engine-capacity-", "capacity"), ("drm-total-cycles-", "total_cycles"),
                ("drm-cycles-", "cycles"), ("drm-maxfreq-", "maxfreq_hz"),
                ("drm-curfreq-", "curfreq_hz"), ("drm-engine-", "busy_ns"))
_GENERIC = ("pos", "flags", "mnt_id", "ino")


def is_drm_path(target: str) -> bool:
    """An fd link target naming a DRM device node (card or render node)."""
    if not target.startswith(DRI_PREFIXES):
        return False
    rest = target[len("/dev/dri/card"):] if target.startswith("/dev/dri/card") \
        else target[len("/dev/dri/renderD"):]
    return rest.isdigit()


def _number(value: str, units: Dict[str, int]) -> Optional[int]:
    parts = value.split()
    if not parts or len(parts) > 2:
        return None
    try:
        n = int(parts[0])
    except ValueError:
        return None
    unit = parts[1] if len(parts) == 2 else ""
    mult = units.get(unit)
    if mult is None or n < 0:
        return None
    return n * mult


def parse_drm_fdinfo(text: str) -> Optional[dict]:
    """The DRM part of one fdinfo, or None when it is not a DRM client (no drm-driver).

    Returns {"driver", "pdev", "client_id", "client_name", "regions": {r: {stat: bytes}},
    "engines": {e: {field: n}}, "driver_keys": {key: raw text}}; keys absent from the text
    stay absent (pdev, client_id, client_name are None then). Values that do not parse are
    dropped rather than guessed.
    """
    info = parse_fdinfo(text)
    driver = info.get("drm-driver")
    if not driver:
        return None
    cid = info.get("drm-client-id")
    client_id = int(cid) if cid is not None and cid.isdigit() else None
    regions: Dict[str, Dict[str, int]] = {}
    legacy: Dict[str, int] = {}
    engines: Dict[str, Dict[str, int]] = {}
    other: Dict[str, str] = {}
    for key, value in info.items():
        if key in _GENERIC or key in ("drm-driver", "drm-pdev", "drm-client-id", "drm-client-name"):
            continue
        if key.startswith("drm-memory-"):
            n = _number(value, _SIZE_UNITS)
            if n is not None:
                legacy[key[len("drm-memory-"):]] = n
            continue
        stat_word = None
        for s in _MEM_STATS:
            p = f"drm-{s}-"
            if key.startswith(p) and not (s == "total" and key.startswith("drm-total-cycles-")):
                stat_word = s
                break
        if stat_word is not None:
            n = _number(value, _SIZE_UNITS)
            if n is not None:
                regions.setdefault(key[len(f"drm-{stat_word}-"):], {})[stat_word] = n
            continue
        for prefix, field in _ENGINE_KEYS:
            if key.startswith(prefix):
                if field == "busy_ns":
                    n = _number(value, {"": 1, "ns": 1})
                elif field.endswith("_hz"):
                    n = _number(value, _FREQ_UNITS)
                else:
                    n = _number(value, {"": 1})
                if n is not None:
                    engines.setdefault(key[len(prefix):], {})[field] = n
                break
        else:
            other[key] = value
    for region, n in legacy.items():
        # drm-memory-<r> is the pre-standard name of resident memory (amdgpu still prints both)
        regions.setdefault(region, {}).setdefault("resident", n)
    return {"driver": driver, "pdev": info.get("drm-pdev") or None, "client_id": client_id,
            "client_name": info.get("drm-client-name") or None, "regions": regions,
            "engines": engines, "driver_keys": other}
