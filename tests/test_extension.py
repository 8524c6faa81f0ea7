"""Adding a chat template or a benchmark touches exactly two files: its module and its YAML.

Both files are written into a fresh folder (outside the repository); the configs find the YAML through Hydra's
search path and the module through `extra_target_prefixes`. Nothing in `dc` is edited or registered.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from dc.constants import IMAGE_TOKEN_INDEX
from dc.pipeline import build_datamodule, evaluate, train

from dc_testing import compose_config

TEMPLATE_MODULE = '''
"""A Vicuna-style template with its own system prompt."""
from dc.models.llms.templates.vicuna import VicunaV1


class Shout(VicunaV1):
    name = "shout"
    system = "YOU ARE A LOUD ASSISTANT."
'''

BENCH_MODULE = '''
"""The synthetic colour questions only (a fixture benchmark)."""
from dc.eval.benchmarks.synthetic import SyntheticQA


class ColourOnly(SyntheticQA):
    name = "colour_only"

    def _load(self):
        records, skips = super()._load()
        return [r for r in records if r.meta["category"] == "colour"], skips
'''


def _extension(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str, yaml_path: str, yaml: str
) -> list[str]:
    """Write the two files; return the overrides that make the configs see them."""
    code, configs = tmp_path / "code", tmp_path / "configs"
    (code / f"{module}.py").parent.mkdir(parents=True, exist_ok=True)
    (code / f"{module}.py").write_text(textwrap.dedent(source))
    (configs / yaml_path).parent.mkdir(parents=True, exist_ok=True)
    (configs / yaml_path).write_text(textwrap.dedent(yaml))
    monkeypatch.syspath_prepend(str(code))
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted([f"code/{module}.py", f"configs/{yaml_path}"])  # exactly two files
    return [f"hydra.searchpath=[file://{configs}]", f"extra_target_prefixes=[{module}.]"]


def test_a_new_chat_template_is_its_module_and_its_yaml(train_cfg, tmp_path, monkeypatch) -> None:
    extra = _extension(
        tmp_path / "ext",
        monkeypatch,
        "dcx_shout",
        TEMPLATE_MODULE,
        "llm/template/shout.yaml",
        "_target_: dcx_shout.Shout\n",
    )
    cfg = train_cfg("llm/template=shout", *extra)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    sample = dm.train_set[0]
    ids = [i for i in sample["input_ids"].tolist() if i != IMAGE_TOKEN_INDEX]
    assert dm.tokenizer.decode(ids).startswith("<s>YOU ARE A LOUD ASSISTANT. USER:")


def test_a_new_benchmark_is_its_module_and_its_yaml(train_cfg, tmp_path, monkeypatch) -> None:
    cfg = train_cfg("trainer.max_steps=1")
    train(cfg)
    root = Path(cfg.data.image_folder).parent
    yaml = f"_target_: dcx_bench.ColourOnly\nroot: {root}\nblank_control: false\nlimit: ${{limit}}\n"
    extra = _extension(tmp_path / "ext", monkeypatch, "dcx_bench", BENCH_MODULE, "benchmark/colour_only.yaml", yaml)
    out = tmp_path / "eval"
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    metrics, _ = evaluate(
        compose_config("eval", [f"ckpt_path={ckpt}", "benchmark=colour_only", f"paths.output_dir={out}", *extra])
    )
    questions = [json.loads(line) for line in (root / "eval.jsonl").read_text().splitlines()]
    gold = {q["question_id"]: q["answer"] for q in questions if q["category"] == "colour"}
    answers = [json.loads(line) for line in (out / "colour_only_answers.jsonl").read_text().splitlines()]
    assert {a["id"] for a in answers} == set(gold)
    hits = sum(a["text"].strip().lower().rstrip(".") == gold[a["id"]] for a in answers)
    assert metrics["colour_only/accuracy"] == pytest.approx(100.0 * hits / len(gold))
