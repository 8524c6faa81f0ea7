"""Benchmark readers and scorers (model-agnostic half of the evaluation suite).

Usage (the generation runner lives elsewhere)::

    from dc.eval.benchmarks import get_benchmark
    bench = get_benchmark("gqa", root=Path(DATA_ROOT) / "eval" / "gqa", **options)
    records, skips = bench.load()
    answers = {...}                       # record.id -> raw model output
    result = bench.score(records, answers)
    bench.write_submission(records, answers, out_dir)

Each module's docstring says where its files go under ``$DATA_ROOT/eval``, the prompt suffix and
``max_new_tokens`` (reference-spec §7; video benchmarks §6: their records carry ``video``).
Shared pieces: :mod:`answers_io` (resumable JSONL answers),
:mod:`report` (atomic JSON/markdown reports), :mod:`vqa_eval` (VQA normalisation and accuracy).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from dc.eval.benchmarks.base import Benchmark, EvalRecord, Skip
from dc.eval.benchmarks.gqa import GQA
from dc.eval.benchmarks.llava_bench import LLaVABench
from dc.eval.benchmarks.mathvista import MathVista
from dc.eval.benchmarks.mmbench import MMBench
from dc.eval.benchmarks.mme import MME
from dc.eval.benchmarks.mmmu import MMMU
from dc.eval.benchmarks.mmvet import MMVet
from dc.eval.benchmarks.pope import POPE
from dc.eval.benchmarks.scienceqa import ScienceQA
from dc.eval.benchmarks.seed import SEEDBench
from dc.eval.benchmarks.textvqa import TextVQA
from dc.eval.benchmarks.video_qa import ActivityNetQA, MSRVTTQA, MSVDQA
from dc.eval.benchmarks.videochatgpt import VideoChatGPTBench
from dc.eval.benchmarks.vqav2 import VQAv2

BENCHMARKS: dict[str, type[Benchmark]] = {
    cls.name: cls
    for cls in (GQA, VQAv2, TextVQA, POPE, MME, ScienceQA, MMBench, MMMU, MathVista, SEEDBench, LLaVABench, MMVet,
                MSVDQA, MSRVTTQA, ActivityNetQA, VideoChatGPTBench)
}
_COMMON_OPTIONS = ("limit", "check_images")


def benchmark_options(name: str) -> list[str]:
    """Keyword options accepted by benchmark ``name`` (besides ``root``)."""
    params = inspect.signature(BENCHMARKS[name].__init__).parameters
    own = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
    return own + list(_COMMON_OPTIONS)


def get_benchmark(name: str, root: str | Path, **options: Any) -> Benchmark:
    """Build a benchmark by registry name.

    Args:
        name: Registry key (see ``BENCHMARKS``).
        root: The benchmark's folder, e.g. ``$DATA_ROOT/eval/gqa``.
        **options: Benchmark options (from the Hydra config). ``None`` values are dropped, so ``null``
            in a config means "use the default".

    Raises:
        ValueError: Unknown name or option; the message lists the allowed values.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; allowed: {sorted(BENCHMARKS)}")
    options = {k: v for k, v in options.items() if v is not None}
    allowed = benchmark_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for benchmark {name!r}; allowed: {sorted(allowed)}")
    return BENCHMARKS[name](root, **options)


__all__ = ["BENCHMARKS", "Benchmark", "EvalRecord", "Skip", "benchmark_options", "get_benchmark"]
