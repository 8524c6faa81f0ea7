"""Every point of every paper-table sweep (`configs/experiment/table*.yaml`, `hydra.sweeper.params`) composes with
the recipe and builds its connector on the meta device, with the visual token counts the paper states."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from dc.experiments.recipe import benchmark_names, stage_config
from dc.models.builder import build_connector

from dc_testing import CONFIGS, compose_config

STUDIES = sorted(p.stem for p in (Path(CONFIGS) / "experiment").glob("table*.yaml"))
TOKENS = {  # (study, connector) -> visual tokens per image, by hand
    ("table1_layers", "mlp"): 9,  # 3×3 patches of the tiny tower
    ("table1_layers", "sti"): 11,  # + one 8-token pool of layer 8 and of layer 16 (floor(9 / 8) = 1 each)
    ("table1_layers", "sci"): 9,
    ("table1_layers", "dci"): 9,
    ("table3_efficient", "mlp"): 576,  # 24×24 CLIP-L patches
    ("table3_efficient", "dci"): 576,
    ("table3_efficient", "dci_efficient"): 144,  # 12×12
}


def _points(study: str) -> list[list[str]]:
    params = OmegaConf.load(Path(CONFIGS) / "experiment" / f"{study}.yaml").hydra.sweeper.params
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    (batch,) = BasicSweeper.split_arguments(overrides, None)
    return batch


def test_the_three_tables_are_there() -> None:
    assert STUDIES == ["table1_layers", "table2_scaling", "table3_efficient"]


@pytest.mark.parametrize("study", STUDIES)
def test_every_sweep_point_composes_and_counts_tokens(study: str, tmp_path: Path) -> None:
    points = _points(study)
    assert len(points) == {"table1_layers": 12, "table2_scaling": 12, "table3_efficient": 3}[study]
    for point in points:
        cfg = compose_config("recipe", [f"experiment={study}", *point, f"paths.output_dir={tmp_path}"])
        s2 = stage_config(cfg, "finetune", tmp_path / "finetune")
        tokens = build_connector(s2, device="meta").num_visual_tokens()
        connector = dict(o.split("=") for o in point).get("connector", "dci")
        assert tokens == TOKENS.get((study, connector), tokens) and tokens > 0
        s1 = stage_config(cfg, "pretrain", tmp_path / "pretrain")
        assert s1.stage.name == "pretrain" and s2.stage.name == "finetune"
        assert ("synthetic" in benchmark_names(cfg)) == (study == "table1_layers")
        if study != "table1_layers":
            assert s1.data.train_file.endswith("blip_laion_cc_sbu_558k.json")
            assert s2.data.train_file.endswith("llava_v1_5_mix665k.json")
