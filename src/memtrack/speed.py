"""Process-wide speed policy, in one place: the cyclic collector paused during a scan
(no_gc), a one-shot command's heap frozen (hold_frozen, thaw), and what a one-shot command
leaves to its exit rather than freeing (keep_to_exit). The backends and the CLI call it;
nothing here is switched on at import."""
from __future__ import annotations

import gc
from typing import Optional


class no_gc:
    """A scan allocates ~10 objects per buffer reference and frees none of them: the cyclic
    collector would walk that growing heap again and again for nothing. Pause it; and
    before it runs again, move what was made to its oldest generation (freeze, unfreeze),
    or the first young collection after the pause would walk all of it (10-30 ms).

    While a one-shot command holds the heap frozen (hold_frozen), what is made stays frozen.
    Whether it does is this module's flag, not gc.get_freeze_count(): that walks the whole
    frozen list, and some interpreters (3.12) start with objects frozen, which made a
    refresher keep every snapshot frozen and pay a walk of all of them per refresh."""

    held = False
    to_exit = False     # the process ends with its command: see keep_to_exit()
    one_shot = False    # ... and the command scans once, prints and ends (get_snapshot)
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
                if not no_gc.held:
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


def hold_frozen():
    """For a command that runs once: freeze everything made so far (its snapshot, kept to
    the end) so the collector never walks it again, until thaw()."""
    if hasattr(gc, "freeze"):
        gc.freeze()
        no_gc.held = True


def thaw():
    no_gc.held = False
    if hasattr(gc, "unfreeze"):
        gc.unfreeze()


_kept: Optional[list] = None


def keep_to_exit(obj) -> None:
    """In a process that exits when its one-shot command ends (cli.console: the memtrack
    command, not a caller of cli.main; get_snapshot: a command that scans once, not top,
    serve or record), never free obj: tens of thousands of objects freed one by one cost
    5-10 ms for nothing, the process is about to go. Its snapshot, and what its scan made
    on the way (the parse's records, the builder's merge). obj joins a list that holds
    itself, frozen: when the interpreter clears the modules at exit the list is an
    unreachable cycle, and the collector leaves the frozen ones alone. Elsewhere a no-op."""
    global _kept
    if not (no_gc.to_exit and no_gc.one_shot) or not hasattr(gc, "freeze"):
        return
    if _kept is None:
        _kept = [None]
        _kept[0] = _kept
    _kept.append(obj)
    gc.freeze()
    no_gc.held = True
