"""The developer's side: the embedded stack, seed data, `run`, the bench, the fault and
conformance runs, the browser and its screenshots. Never in the production image."""
