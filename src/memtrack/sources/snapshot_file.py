"""A JSON snapshot written by `memtrack --json`, read back as a Snapshot."""
from __future__ import annotations

import json

from ..errors import SourceError
from ..model import Snapshot


def load_snapshot(path) -> Snapshot:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: not valid JSON ({exc})") from None
    return Snapshot.from_dict(doc)
