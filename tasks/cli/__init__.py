"""The command line: `python -m tasks <command>` runs the operator's commands (tasks/ops);
the development distribution (dev/) adds its `dev` group through an entry point, so the
runtime's wheel and image carry none of it. Each command imports its layer only when it
runs, and no layer below imports this package (tests/unit/test_layers.py holds that).

    errors.py    every failure becomes one line and a documented exit code (main)
    common.py    option types, refusals and printing, shared with dev/devkit/cli.py
    operator.py  the root group: init, status, health, redrive, unmask, rekey, sweep, config
"""

from tasks.cli.errors import main

__all__ = ["main"]
