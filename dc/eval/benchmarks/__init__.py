"""Benchmark readers and scorers (model-agnostic half of the evaluation suite).

A benchmark is its module here plus its config `configs/benchmark/<name>.yaml` (`_target_` its class, `root` its
folder, its options as keys); nothing else registers it. Usage (the generation runner is `dc.eval.runner`)::

    bench = instantiate(cfg.benchmark)            # e.g. GQA(root=$DATA_ROOT/eval/gqa, ...)
    records, skips = bench.load()
    answers = {...}                               # record.id -> raw model output
    result = bench.score(records, answers)
    bench.write_submission(records, answers, out_dir)

Each module's docstring says where its files go under ``$DATA_ROOT/eval``, the prompt suffix and
``max_new_tokens`` (as in the reference code). Shared pieces: :mod:`answers_io` (resumable JSONL answers),
:mod:`report` (atomic JSON/markdown reports), :mod:`vqa_eval` (VQA normalisation and accuracy).
"""

from dc.eval.benchmarks.base import Benchmark, EvalRecord, Skip

__all__ = ["Benchmark", "EvalRecord", "Skip"]
