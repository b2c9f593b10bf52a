"""Command line: `python -m tasks <command>` (see `python -m tasks --help`)."""

from tasks.cli import main

raise SystemExit(main())
