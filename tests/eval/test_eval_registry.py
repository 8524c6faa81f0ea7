"""Registry, options validation, and the per-module contract (docstring says where files go, budgets)."""

from __future__ import annotations

import importlib

import pytest

from dc.eval.benchmarks import BENCHMARKS, get_benchmark
from dc.eval.benchmarks.base import Benchmark

# max_new_tokens per benchmark, from reference-spec §7 (video: §6).
SPEC_MAX_NEW_TOKENS = {"gqa": 128, "vqav2": 128, "textvqa": 128, "pope": 128, "mme": 128, "scienceqa": 1024,
                       "mmbench": 1024, "mmmu": 128, "mathvista": 1024, "seed": 128, "llava_bench": 1024, "mmvet": 1024,
                       # video (reference-spec §6.4): the Dense Connector's 512
                       "msvd_qa": 512, "msrvtt_qa": 512, "activitynet_qa": 512, "videochatgpt": 512}


def test_registry_names_and_budgets():
    assert set(BENCHMARKS) == set(SPEC_MAX_NEW_TOKENS)
    for name, cls in BENCHMARKS.items():
        assert issubclass(cls, Benchmark) and cls.name == name
        assert cls.max_new_tokens == SPEC_MAX_NEW_TOKENS[name], name


@pytest.mark.parametrize("name", sorted(SPEC_MAX_NEW_TOKENS))
def test_module_docstring_states_files_and_budget(name):
    doc = importlib.import_module(BENCHMARKS[name].__module__).__doc__ or ""
    assert "$DATA_ROOT/eval/" in doc and "max_new_tokens" in doc


def test_get_benchmark_errors_name_the_allowed_values(tmp_path):
    with pytest.raises(ValueError, match="allowed: .*'gqa'"):
        get_benchmark("gqa2", root=tmp_path)
    with pytest.raises(ValueError, match="question_file"):
        get_benchmark("gqa", root=tmp_path, question_fle="x.jsonl")
    with pytest.raises(ValueError, match="splits"):
        get_benchmark("pope", root=tmp_path, splits=["random", "easy"])


def test_limit_and_greedy_default(files):
    files.jsonl("gqa/llava_gqa_testdev_balanced.jsonl",
                [{"question_id": str(i), "image": "a.jpg", "text": "Q?"} for i in range(5)])
    files.image("gqa/data/images/a.jpg")
    records, _ = get_benchmark("gqa", root=files.root / "gqa", limit=2).load()
    assert [r.id for r in records] == ["0", "1"]
    assert BENCHMARKS["gqa"].generation_kwargs == {"do_sample": False, "num_beams": 1}


def test_missing_question_file_names_the_benchmark(tmp_path):
    with pytest.raises(FileNotFoundError, match="gqa: required file .*llava_gqa_testdev_balanced.jsonl"):
        get_benchmark("gqa", root=tmp_path).load()


def test_null_options_mean_default(files):
    files.jsonl("gqa/llava_gqa_testdev_balanced.jsonl", [{"question_id": "1", "image": "a.jpg", "text": "Q?"}])
    files.image("gqa/data/images/a.jpg")
    records, _ = get_benchmark("gqa", root=files.root / "gqa", question_file=None, limit=None).load()
    assert [r.id for r in records] == ["1"]
