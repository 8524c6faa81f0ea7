"""Evaluation: generation runner, benchmark readers and scorers (see ``dc.eval.benchmarks``)."""
