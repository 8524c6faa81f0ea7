"""The benchmark registry is `configs/benchmark/`: every YAML builds its class, its keys are the class's options
with the class's defaults, and each module's docstring says where its files go and its generation budget."""

from __future__ import annotations

import importlib
import inspect

import pytest
from omegaconf import OmegaConf

from dc.eval.benchmarks.base import Benchmark

from dc_testing import benchmark_classes, config_options, get_benchmark, load_option

# max_new_tokens per benchmark, from the reference code's evaluation scripts (video: its video scripts).
SPEC_MAX_NEW_TOKENS = {
    "gqa": 128,
    "vqav2": 128,
    "textvqa": 128,
    "pope": 128,
    "mme": 128,
    "scienceqa": 1024,
    "mmbench": 1024,
    "mmmu": 128,
    "mathvista": 1024,
    "seed": 128,
    "llava_bench": 1024,
    "mmvet": 1024,
    # video (as in the reference code): the Dense Connector's 512
    "msvd_qa": 512,
    "msrvtt_qa": 512,
    "activitynet_qa": 512,
    "videochatgpt": 512,
    "synthetic": 8,
    "synthetic_video": 8,
}


def test_registry_names_and_budgets():
    classes = benchmark_classes()
    assert set(classes) == set(SPEC_MAX_NEW_TOKENS) == set(config_options("benchmark"))
    for name, cls in classes.items():
        assert issubclass(cls, Benchmark) and cls.name == name
        assert cls.max_new_tokens == SPEC_MAX_NEW_TOKENS[name], name


@pytest.mark.parametrize("name", sorted(SPEC_MAX_NEW_TOKENS))
def test_config_keys_are_the_options_with_their_defaults(name):
    """The YAML lists every keyword option of the class with the class's own default (plus root and limit)."""
    node = OmegaConf.to_container(load_option("benchmark", name), resolve=False)
    cls = benchmark_classes()[name]
    own = {
        p: v.default
        for p, v in inspect.signature(cls.__init__).parameters.items()
        if v.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert set(node) == {"_target_", "root", "check_images", "limit"} | set(own)
    for key, default in own.items():
        value = node[key]
        assert (list(value) if isinstance(value, list) else value) == (
            list(default) if isinstance(default, tuple) else default
        ), key


@pytest.mark.parametrize("name", sorted(set(SPEC_MAX_NEW_TOKENS) - {"synthetic", "synthetic_video"}))
def test_module_docstring_states_files_and_budget(name):
    doc = importlib.import_module(benchmark_classes()[name].__module__).__doc__ or ""
    assert "$DATA_ROOT/eval/" in doc and "max_new_tokens" in doc


def test_bad_options_are_named(tmp_path):
    with pytest.raises(Exception, match="question_fle"):
        get_benchmark("gqa", root=tmp_path, question_fle="x.jsonl")
    with pytest.raises(ValueError, match="splits"):
        get_benchmark("pope", root=tmp_path, splits=["random", "easy"])


def test_limit_and_greedy_default(files):
    files.jsonl(
        "gqa/llava_gqa_testdev_balanced.jsonl",
        [{"question_id": str(i), "image": "a.jpg", "text": "Q?"} for i in range(5)],
    )
    files.image("gqa/data/images/a.jpg")
    bench = get_benchmark("gqa", root=files.root / "gqa", limit=2)
    records, _ = bench.load()
    assert [r.id for r in records] == ["0", "1"]
    assert bench.generation_kwargs == {"do_sample": False, "num_beams": 1}


def test_missing_question_file_names_the_benchmark(tmp_path):
    with pytest.raises(FileNotFoundError, match="gqa: required file .*llava_gqa_testdev_balanced.jsonl"):
        get_benchmark("gqa", root=tmp_path).load()


@pytest.mark.parametrize("name", [n for n in config_options("benchmark") if not n.startswith("synthetic")])
def test_the_module_docstring_names_the_folder_eval_py_reads(name: str) -> None:
    """The README sends users to each benchmark module's docstring for where its files go: the folder it names is
    the one the config's `root` points at."""
    node = load_option("benchmark", name)
    folder = str(OmegaConf.to_container(node)["root"]).removeprefix("${paths.data_dir}/")
    module = importlib.import_module(str(node._target_).rpartition(".")[0])
    assert f"$DATA_ROOT/{folder}`" in module.__doc__ or f"$DATA_ROOT/{folder}/" in module.__doc__, (name, folder)


@pytest.mark.parametrize("name", config_options("benchmark"))
def test_scoring_options_are_declared_scoring_only(name: str) -> None:
    """A config's scoring rule and judge options are the class's `scoring_keys` (left out of the answers'
    fingerprint, so a second run scores the answers given); MMMU's `option_image_rule` changes what is asked."""
    node = load_option("benchmark", name)
    module, _, cls_name = str(node._target_).rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    scoring = {k for k in node if k == "scoring_rule" or k == "use_judge" or str(k).startswith("judge_")}
    assert scoring <= set(cls.scoring_keys), (name, scoring - set(cls.scoring_keys))
    assert "option_image_rule" not in cls.scoring_keys
