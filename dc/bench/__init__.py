"""Benchmark runner: side-by-side ratios of two configurations measured interleaved in one process.

`python -m dc.bench --mode quick|full` writes a markdown report (`docs/benchmarks.md`) and a JSON twin (same stem,
`.json`); a partial run (`--only P1,P3`) or `--tiny` needs its own `--out`. See `docs/benchmarks.md` for the
figures and `dc/bench/*_figures.py` for how each one is measured.
"""
