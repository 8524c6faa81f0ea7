"""Helpers shared by the test suite (imported by tests as `dc_testing`)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "configs")


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """Compose `configs/<name>.yaml` as the CLI would (without Hydra's runtime values)."""
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)
