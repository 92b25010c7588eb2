"""Benchmarks behind the README's numbers, run from the repository root as `python -m bench.pN_x`."""
