"""Checks on a Rebuilder's state (the incremental and bpf refresher tests)."""
from collections import Counter


def rebuilder_ids_exact(rb) -> bool:
    """The Rebuilder's per-id buffer counts are those of the buffers it holds now, and no
    more: what a whole build computes (Rebuilder._full)."""
    keys = set(rb._key_pids) | set(rb._kernel)
    return rb._ready and rb._ids == dict(Counter((k[0], k[2]) for k in keys if k[1] != "anon"))
