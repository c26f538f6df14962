"""The memtrack command: `python -m memtrack`, and the console script (memtrack.__main__:main)."""
from __future__ import annotations


def main() -> None:
    # As root, about to scan once: start loading the BPF object before the CLI's own imports
    # (argparse, the command's modules), so that the load overlaps them (_preload).
    from . import _preload
    _preload.early()
    from .cli import console
    console()


if __name__ == "__main__":
    main()
