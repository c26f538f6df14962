import gc

from memtrack.cli import main

rc = main()
# Exiting: the interpreter's last collection would walk every object only to free it anyway.
gc.freeze()
raise SystemExit(rc)
