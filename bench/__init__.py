"""Benchmarks for Luna voice (not part of the test suite): ``python -m bench --help``."""
