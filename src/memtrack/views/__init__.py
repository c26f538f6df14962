"""Views: turn snapshots and accounting into text. No accounting logic lives here."""
