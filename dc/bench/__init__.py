"""Benchmark runner: side-by-side ratios of two configurations measured interleaved in one process.

`python -m dc.bench --mode quick|full [--only P1,P3] [--out docs/benchmarks.md]` writes a markdown report and a
JSON twin (same stem, `.json`). See `docs/benchmarks.md` for the figures and `dc/bench/figures.py` for how each
one is measured.
"""
