"""`trainer=fsdp1` (FSDP1), checked without running it (Lightning's FSDPStrategy refuses accelerator=cpu): wrap
units come from the components, sharding follows the stage, bf16 mixed precision, LoRA per peft's FSDP guide,
rank-0-only loading of a pretrained LLM. (FSDP2, `trainer=fsdp`, runs on CPU: tests/training/test_training_fsdp2.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecision, ShardingStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from dc.lit_module import DCModule
from dc.models.builder import build_vlm
from dc.training.fsdp import LoraWrapPolicy, VLMFSDPStrategy
from dc.utils.instantiate import instantiate

from dc_testing import make_module
from train_helpers import compose_config, single_thread  # noqa: F401


def _cfg(tmp: Path, data_dir: Path, *overrides: str):
    return compose_config(
        "train",
        [
            "debug=fast",
            "trainer=fsdp1",
            f"paths.output_dir={tmp}",
            f"paths.data_dir={data_dir}",
            "run_name=fsdp",
            *overrides,
        ],
    )


def _strategy_and_module(cfg) -> tuple[VLMFSDPStrategy, DCModule]:
    strategy = instantiate(cfg.trainer.strategy)
    module = make_module(cfg)
    module.configure_model()
    strategy.configure_units(module)  # what _setup_model does right before wrapping
    return strategy, module


def _own_params(module: nn.Module, units: set[nn.Module]) -> list[nn.Parameter]:
    """Parameters a unit flattens itself: its own, minus those of nested units."""
    out, stack = list(module.parameters(recurse=False)), list(module.children())
    while stack:
        child = stack.pop()
        if child in units:
            continue
        out.extend(child.parameters(recurse=False))
        stack.extend(child.children())
    return out


@pytest.mark.parametrize(
    "stage,sharding", [("pretrain", ShardingStrategy.SHARD_GRAD_OP), ("finetune", ShardingStrategy.FULL_SHARD)]
)
def test_full_model_strategy(stage: str, sharding: ShardingStrategy, tmp_path: Path, data_dir: Path) -> None:
    cfg = _cfg(tmp_path, data_dir, f"stage={stage}")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    strategy, module = _strategy_and_module(cfg)
    assert isinstance(strategy, VLMFSDPStrategy)
    assert strategy.sharding_strategy == sharding
    assert strategy.mixed_precision == MixedPrecision(
        param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16, buffer_dtype=torch.bfloat16
    )
    assert strategy.kwargs["use_orig_params"] is True  # frozen + trainable parameters may share the root unit
    assert strategy.kwargs["sync_module_states"] is True and callable(strategy.kwargs["param_init_fn"])
    assert strategy.kwargs["limit_all_gathers"] is True
    assert strategy.state_dict_type == "full"

    policy = strategy.kwargs["auto_wrap_policy"]
    connector_cls = type(module.vlm.connector)
    assert isinstance(policy, ModuleWrapPolicy)
    encoder_cls = type(module.vlm.encoder)
    assert set(policy._module_classes) == {LlamaDecoderLayer, CLIPEncoderLayer, connector_cls, encoder_cls}
    targets = policy._run_policy(module, set(), {})
    assert sum(isinstance(m, LlamaDecoderLayer) for m in targets) == cfg.llm.config.num_hidden_layers
    assert sum(isinstance(m, CLIPEncoderLayer) for m in targets) == module.vlm.encoder.depth
    assert module.vlm.connector in targets and module.vlm.encoder in targets
    assert strategy._activation_checkpointing_kwargs == {}  # checkpointing is llm.activation_checkpointing


def test_lora_strategy_follows_peft_fsdp_guide(tmp_path: Path, data_dir: Path) -> None:
    strategy, module = _strategy_and_module(_cfg(tmp_path, data_dir, "stage=lora"))
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert strategy.kwargs["use_orig_params"] is False
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, LoraWrapPolicy)
    assert policy.module_classes == {
        LlamaDecoderLayer,
        CLIPEncoderLayer,
        type(module.vlm.connector),
        type(module.vlm.encoder),
    }
    units = set(policy._run_policy(module, set(), {})) | {module}
    lora_leaves = {
        m for n, m in module.named_modules() if isinstance(m, nn.Linear) and (".lora_A." in n or ".lora_B." in n)
    }
    assert len(lora_leaves) == 2 * 7 * module.model_cfg.llm.config.num_hidden_layers  # A and B on 7 Linears per layer
    assert lora_leaves <= units
    # use_orig_params=False needs every flat parameter uniformly trainable or frozen
    for unit in units:
        flags = {p.requires_grad for p in _own_params(unit, units)}
        assert len(flags) <= 1, f"{type(unit).__name__} mixes frozen and trainable parameters"


def test_strategy_options_and_errors(tmp_path: Path, data_dir: Path) -> None:
    cfg = _cfg(
        tmp_path,
        data_dir,
        "stage=finetune",
        "trainer.strategy.reduce_dtype=float32",
        "trainer.strategy.state_dict_type=sharded",
        "trainer.strategy.cpu_ram_efficient_loading=false",
        "trainer.strategy.wrap_vision_blocks=false",
    )
    strategy, module = _strategy_and_module(cfg)
    assert strategy.mixed_precision.reduce_dtype == torch.float32
    assert strategy.state_dict_type == "sharded"
    assert "sync_module_states" not in strategy.kwargs
    assert set(strategy.kwargs["auto_wrap_policy"]._module_classes) == {
        LlamaDecoderLayer,
        type(module.vlm.connector),
        type(module.vlm.encoder),
    }
    with pytest.raises(ValueError, match="stage.sharding"):
        VLMFSDPStrategy(sharding_strategy="ZERO3")
    with pytest.raises(ValueError, match="llm.activation_checkpointing"):
        VLMFSDPStrategy(activation_checkpointing=True)


def test_meta_materialisation_only_touches_meta_modules() -> None:
    strategy = VLMFSDPStrategy(sharding_strategy="FULL_SHARD")
    strategy.parallel_devices = [torch.device("cpu")]
    real = nn.Linear(2, 2)
    weight = real.weight.detach().clone()
    strategy._materialize_meta(real)
    assert torch.equal(real.weight, weight)
    with torch.device("meta"):
        lazy = nn.Linear(2, 2)
    strategy._materialize_meta(lazy)
    assert not lazy.weight.is_meta and lazy.weight.device.type == "cpu"


def test_nonzero_ranks_build_the_pretrained_llm_on_meta(tmp_path: Path, data_dir: Path) -> None:
    """`cpu_ram_efficient_loading`: same parameter names, shapes and dtypes as the real build, LLM on meta."""
    base = compose_config(
        "train", ["debug=fast", f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}", "run_name=x"]
    )
    torch.manual_seed(0)
    build_vlm(base).llm.model.save_pretrained(tmp_path / "llm")
    cfg = compose_config(
        "train",
        [
            "debug=fast",
            f"paths.output_dir={tmp_path}",
            f"paths.data_dir={data_dir}",
            "run_name=x",
            f"llm.pretrained={tmp_path / 'llm'}",
            "llm.config={}",
        ],
    )
    real, meta = build_vlm(cfg), build_vlm(cfg, llm_on_meta=True)
    shapes = lambda m: {k: (tuple(v.shape), v.dtype) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(real) == shapes(meta)
    assert all(t.is_meta for t in meta.llm.state_dict().values())
    assert not any(p.is_meta for p in [*meta.encoder.parameters(), *meta.connector.parameters()])
