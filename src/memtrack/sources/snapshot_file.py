"""A JSON snapshot written by `memtrack --json`, read back as a Snapshot."""
from __future__ import annotations

import json
import os

from ..errors import SourceError
from ..json_in import from_dict
from ..model import Snapshot


#: JSON text becomes about 8.5 times its size in objects (measured: 36 MiB of snapshot,
#: 200,000 references, 305 MiB peak): this keeps the whole process under the 1 GiB cap
MAX_SNAPSHOT = 96 << 20


def load_snapshot(path, saved_filter=None, data=None) -> Snapshot:
    """The snapshot in the file; saved_filter (a dict) receives its "filter", if any.
    data: the file's bytes, already read (from a pipe, which can be read only once)."""
    try:
        if data is None:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size > MAX_SNAPSHOT:
                    raise SourceError(f"{path}: a JSON snapshot over {MAX_SNAPSHOT >> 20} MiB, refusing")
                data = f.read(MAX_SNAPSHOT + 1)
        if len(data) > MAX_SNAPSHOT:
            raise SourceError(f"{path}: a JSON snapshot over {MAX_SNAPSHOT >> 20} MiB, refusing")
        doc = json.loads(data.decode("utf-8"))
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise SourceError(f"{path}: not a memtrack snapshot (JSON nested too deep)") from None
    try:
        snap = from_dict(doc)
    except SourceError as exc:
        raise SourceError(f"{path}: {exc}") from None
    if saved_filter is not None:
        saved_filter.update(_filter(path, doc.get("filter")))
    return snap


def _filter(path, filt) -> dict:
    """{"pids": set, "kinds": set} of a snapshot's "filter", each key only where it was saved."""
    if not filt:
        return {}
    ok = isinstance(filt, dict)
    out = {}
    for key, typ in (("pids", int), ("kinds", str)):
        v = filt.get(key) if ok else None
        if v is not None:
            ok = ok and isinstance(v, list) and all(type(x) is typ for x in v)
            out[key] = set(v) if ok else None
    if not ok:
        raise SourceError(f"{path}: not a memtrack snapshot: a malformed \"filter\" (the -p/--kind it was "
                          "saved with)")
    return out
