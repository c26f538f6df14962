"""A JSON snapshot written by `memtrack --json`, read back as a Snapshot."""
from __future__ import annotations

import json

from ..errors import SourceError
from ..model import Snapshot


MAX_SNAPSHOT = 1 << 30


def load_snapshot(path) -> Snapshot:
    try:
        with open(path, "rb") as f:
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
    return Snapshot.from_dict(doc)
