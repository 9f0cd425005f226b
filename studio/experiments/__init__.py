"""Experiments: sweeps that expand into ordinary queued runs, comparisons and reports read from run folders,
and the checkpoints of a run (listed, branched from, used as adapters). No torch import: the UI calls these."""
