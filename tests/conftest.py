"""Shared test fixtures: composing the real Hydra configs with test-friendly overrides."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from dc_testing import compose_config

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One DATA_ROOT per test session, so the small synthetic set is generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def train_cfg(tmp_path: Path, data_dir: Path) -> Callable[..., DictConfig]:
    """Compose `train.yaml` with the tiny parts, a small synthetic set, outputs in tmp_path and no logger."""

    def make(*overrides: str) -> DictConfig:
        base = [
            "debug=fast",
            f"paths.output_dir={tmp_path / 'out'}",
            f"paths.data_dir={data_dir}",
            "run_name=test",
            "logger=csv",
            "trainer.enable_progress_bar=false",
        ]
        return compose_config("train", base + list(overrides))

    return make
