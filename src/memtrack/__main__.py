from memtrack.cli import main

raise SystemExit(main())
