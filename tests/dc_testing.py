"""Helpers shared by the test suite (imported by tests as `dc_testing`)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "configs")


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """Compose `configs/<name>.yaml` as the CLI would, with Hydra's runtime values (`${hydra:...}`) resolvable."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def config_options(group: str) -> list[str]:
    """The option names of a config group, by globbing `configs/<group>/*.yaml` (the group is the registry)."""
    return sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml"))


def load_option(group: str, name: str) -> DictConfig:
    """`configs/<group>/<name>.yaml` as a plain node (no composition)."""
    from omegaconf import OmegaConf

    return OmegaConf.load(ROOT / "configs" / group / f"{name}.yaml")


def make_template(name: str):
    """The chat template `configs/llm/template/<name>.yaml` builds."""
    from dc.utils.instantiate import instantiate

    return instantiate(load_option("llm/template", name))


def get_benchmark(name: str, root, **options):
    """The benchmark `configs/benchmark/<name>.yaml` builds, with its folder `root` and some options changed."""
    from dc.utils.instantiate import instantiate

    node = load_option("benchmark", name)
    node.root = str(root)
    node.limit = None
    for key, value in options.items():
        node[key] = value
    return instantiate(node)


def benchmark_classes() -> dict:
    """{config name: benchmark class} for every `configs/benchmark/*.yaml`."""
    from hydra.utils import get_class

    return {name: get_class(load_option("benchmark", name)._target_) for name in config_options("benchmark")}


def tiny_tokenizer():
    """The tiny LLM's tokenizer, built as its config (`configs/llm/tiny.yaml`) says."""
    from dc.utils.instantiate import instantiate

    return instantiate(load_option("llm", "tiny").tokenizer)


def make_module(cfg: DictConfig, **kwargs):
    """A `DCModule` for a composed root config, as `dc.pipeline.train` builds it."""
    from dc.lit_module import DCModule, model_config

    return DCModule(model_config(cfg), cfg.stage, int(cfg.seed), **kwargs)
