"""Benchmarks, kept outside the importable `studio` package: `python -m benchmarks.train_bench` (`make bench`)."""
