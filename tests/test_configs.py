"""Every option of every config group composes, and every model option builds its connector (indices validated)
on the meta device without loading anything: the config folder is the registry, so the test globs it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from dc.models.builder import build_connector, build_image_mode

from dc_testing import ROOT, compose_config, config_options

BASE = ["run_name=t", "paths.output_dir=/tmp/unused"]
TRAIN_GROUPS = ("encoder", "connector", "llm", "stage", "data", "image", "trainer", "logger", "callbacks", "experiment")


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in TRAIN_GROUPS for o in config_options(g)])
def test_every_train_option_composes(group: str, option: str) -> None:
    cfg = compose_config("train", [f"{group}={option}", *BASE])
    assert group == "experiment" or cfg[group] is not None
    glued = [v for v in _strings(OmegaConf.to_container(cfg, resolve=False)) if re.search(r"\S# ", v)]
    assert not glued, f"a YAML comment without a space before '#' became part of a value: {glued}"
    assert cfg.llm.activation_checkpointing in ("none", "selective", "full")


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("trainer", config_options("trainer"))
@pytest.mark.parametrize("stage", config_options("stage"))
def test_documented_launch_and_storage_keys_exist(trainer: str, stage: str) -> None:
    """What scripts/torchrun.sh, the SLURM launcher and docs/training.md pass, without `+`."""
    overrides = [f"trainer={trainer}", f"stage={stage}", "trainer.devices=8", "trainer.num_nodes=2"]
    cfg = compose_config("train", [*overrides, "stage.frozen_dtype=float32", *BASE])
    assert cfg.trainer.num_nodes == 2 and cfg.stage.frozen_dtype == "float32"
    assert compose_config("train", [f"stage={stage}", *BASE]).stage.frozen_dtype == "auto"


@pytest.mark.parametrize("encoder", config_options("encoder"))
@pytest.mark.parametrize("connector", config_options("connector"))
@pytest.mark.parametrize("image", config_options("image"))
def test_every_model_combination_counts_tokens_on_meta(encoder: str, connector: str, image: str) -> None:
    cfg = compose_config("train", [f"encoder={encoder}", f"connector={connector}", f"image={image}", *BASE])
    if cfg.encoder.get("mgm") is not None and image != "single":  # Mini-Gemini mines one view per image
        with pytest.raises(ValueError, match="image=single"):
            build_connector(cfg, device="meta")
        return
    conn = build_connector(cfg, device="meta")
    assert conn.num_visual_tokens() > 0 and build_image_mode(cfg) is not None


@pytest.mark.parametrize("benchmark", config_options("benchmark"))
def test_every_benchmark_composes(benchmark: str) -> None:
    cfg = compose_config("eval", [f"benchmark={benchmark}", "ckpt_path=x.ckpt"])
    assert str(cfg.benchmark._target_).startswith("dc.eval.benchmarks.")


def test_headline_anyres_command_composes_with_real_hub_ids() -> None:
    """`python train.py connector=dci encoder=siglip llm=vicuna7b image=anyres --cfg job` (nothing downloaded)."""
    cmd = [
        sys.executable,
        "train.py",
        "connector=dci",
        "encoder=siglip",
        "llm=vicuna7b",
        "image=anyres",
        "--cfg",
        "job",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout
    assert "google/siglip-so400m-patch14-384" in out and "lmsys/vicuna-7b-v1.5" in out
    assert "dc.models.visual.anyres.AnyRes" in out and "max_length: 4096" in out
