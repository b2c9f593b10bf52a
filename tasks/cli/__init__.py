"""The command line, above both layers it drives: `python -m tasks <command>` runs the
operator's commands (tasks/ops) and `python -m tasks dev <command>` the developer's
(tasks/dev). Each command imports its layer only when it runs, so the production image,
which carries no tasks/dev, still lists and refuses the development commands; and
neither layer imports this package (tests/unit/test_layers.py holds that).

    errors.py    every failure becomes one line and a documented exit code (main)
    operator.py  the root group: init, status, health, redrive, unmask, rekey, sweep, config
    dev.py       the `dev` group: stack, seed, run, bench, faults, conformance, docs
    readme.py    README's commands table, made from this click tree
"""

from tasks.cli.errors import main

__all__ = ["main"]
