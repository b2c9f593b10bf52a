"""Command line: `python -m tasks <command>` (see `python -m tasks --help`)."""

from tasks.ops.cli import main

raise SystemExit(main())
