"""One module per command (discovered by memtrack.cli)."""
