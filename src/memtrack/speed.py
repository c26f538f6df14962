"""Process-wide speed policy, in one place: the cyclic collector paused while a scan builds
its snapshot (no_gc). The backends and the JSON writer call it; it restores what it found.
(A one-shot command's exit without freeing anything is the console entry point's: cli.console.)"""
from __future__ import annotations

import gc


class no_gc:
    """A scan allocates ~10 objects per buffer reference and frees none of them: the cyclic
    collector would walk that growing heap again and again for nothing. Pause it; and
    before it runs again, move what was made to its oldest generation (freeze, unfreeze),
    or the first young collection after the pause would walk all of it (10-30 ms)."""

    # What the pauses moved to the oldest generation since it was last collected, and how
    # many objects that collection left (see __exit__); the floor keeps a small heap from
    # being collected whole after every pause.
    pending = 0
    long_lived = 0
    FLOOR = 20000

    def __enter__(self):
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        if self.was:
            if hasattr(gc, "freeze"):
                made = gc.get_count()[0]        # objects made during the pause, net
                gc.freeze()
                gc.unfreeze()
                no_gc._age(made)
            gc.enable()

    @staticmethod
    def _age(made: int) -> None:
        """unfreeze() puts what the pause made straight into the oldest generation, which
        CPython collects only once a quarter more objects than its last collection left
        have aged into it through the young ones: objects put there this way are not
        counted, so in a refresher (top, serve, record) it never ran again, and every
        cycle of garbage a refresh left (a ctypes cast, an exception and its traceback)
        stayed for good: tens of MB an hour under process churn. The same rule, counted
        here."""
        no_gc.pending += max(0, made)
        if no_gc.pending > max(no_gc.long_lived // 4, no_gc.FLOOR):
            gc.collect()
            no_gc.long_lived = len(gc.get_objects())
            no_gc.pending = 0
