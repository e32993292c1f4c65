"""Benchmarks on the real test bed; run one as `python -m bench.<name>` (see bench/README.md)."""
