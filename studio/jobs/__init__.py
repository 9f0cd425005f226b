"""Training jobs: the run folder (events), the worker that trains, the manager that starts and watches it."""
