"""The developer's side, a distribution of its own (dev/pyproject.toml): the embedded
stack, seed data, `run`, the bench, the fault and conformance runs, the browser and its
screenshots, the docs' generators and the lock. Never in the runtime's wheel or image; it
imports the runtime (tasks), never the other way round."""
