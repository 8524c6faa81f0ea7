"""FSDP1 for the VLM (`trainer=fsdp1`; FSDP2 is `trainer=fsdp`, `dc.training.fsdp2`): wrap units declared by the
components, per-stage sharding, bf16 mixed precision, LoRA per peft's FSDP guide, rank-0 weight loading.

Kept for torch < 2.6, where FSDP2's `fully_shard` is not public. Activation checkpointing is not this strategy's:
it is `llm.activation_checkpointing`, applied by the LLM itself under every strategy.

Wrap units (each its own FSDP unit; the rest — embeddings, final norms, `lm_head` — stays in the root unit):

* LLM decoder layers: `LanguageModel.decoder_layer_classes()`;
* vision-encoder blocks: `VisionEncoder.block_classes()`;
* the connector (so the root unit never mixes the trainable connector with the frozen 0.5B-parameter
  Llama-3 embedding/lm_head, which would get gradient buffers under `use_orig_params=True`);
* the vision encoder itself (its stem — patch embedding, pre-norm — is frozen and, with frozen parts stored in
  bf16, must not share a flat parameter with the LLM's fp32 trainable embedding: a flat parameter has one dtype);
* with LoRA, additionally every trainable leaf module (the `lora_A`/`lora_B` Linears), exactly like
  `peft.utils.other.fsdp_auto_wrap_policy`, so every flat parameter is uniformly trainable or frozen and
  `use_orig_params=False` (peft's recommendation for the memory savings) works.

The classes come from the built model, so they are resolved in `_setup_model`, after `configure_model` has
built the VLM and right before wrapping; `configure_units(module)` does the same for inspection and tests.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp import MixedPrecision
from torch.distributed.fsdp.wrap import CustomPolicy, ModuleWrapPolicy

from dc.models.vlm import VLM
from dc.training.precision import strategy_dtype
from dc.utils.errors import ConfigError

log = logging.getLogger(__name__)

SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2", "NO_SHARD")
STATE_DICT_TYPES = ("full", "sharded")


def is_trainable_leaf(module: nn.Module) -> bool:
    """A module without children whose weight trains (peft's FSDP lambda policy: the LoRA A/B Linears)."""
    weight = getattr(module, "weight", None)
    return next(module.children(), None) is None and isinstance(weight, torch.Tensor) and weight.requires_grad


class LoraWrapPolicy(CustomPolicy):
    """Wrap `module_classes` and every trainable leaf (peft's `fsdp_auto_wrap_policy`, plus our vision/connector units)."""

    def __init__(self, module_classes: set[type[nn.Module]]) -> None:
        self.module_classes = frozenset(module_classes)
        classes = tuple(module_classes)
        super().__init__(lambda m: isinstance(m, classes) or is_trainable_leaf(m))


def wrap_units(vlm: VLM, *, wrap_vision_blocks: bool = True) -> set[type[nn.Module]]:
    """FSDP wrap classes declared by the VLM's components."""
    decoder = set(vlm.llm.decoder_layer_classes())
    if not decoder:
        raise ValueError(f"LLM {type(vlm.llm.model).__name__} declares no decoder layer classes (_no_split_modules)")
    wrap = decoder | {type(vlm.connector), type(vlm.encoder)}
    if wrap_vision_blocks:
        wrap |= set(vlm.encoder.block_classes())
    return wrap


class VLMFSDPStrategy(FSDPStrategy):
    """Lightning `FSDPStrategy` configured for a `DCModule`.

    Args:
        sharding_strategy: per stage (`stage.sharding`): SHARD_GRAD_OP for the connector-only stage 1,
            FULL_SHARD for stage 2; HYBRID_SHARD shards within a node and replicates across nodes.
        lora: the `stage.lora` node (or None); when set, `use_orig_params=False` and LoRA leaves are wrapped.
        activation_checkpointing: must be false: checkpointing is `llm.activation_checkpointing`.
        wrap_vision_blocks: make every vision block an FSDP unit.
        param_dtype, reduce_dtype, buffer_dtype: FSDP `MixedPrecision` (fp32 sharded master weights stay fp32).
        cpu_ram_efficient_loading: only global rank 0 reads pretrained LLM weights; the other ranks build the
            LLM on the meta device and receive rank 0's weights through `sync_module_states`.
        state_dict_type: "full" (one file on rank 0; holds only the weights a checkpoint must keep) or
            "sharded" (a folder per checkpoint, written by all ranks in parallel; consolidate with
            `python -m dc.training.checkpoint consolidate`).
        **kwargs: further `FSDPStrategy` / `FullyShardedDataParallel` arguments (`limit_all_gathers`, ...).
    """

    def __init__(
        self,
        *,
        sharding_strategy: str = "FULL_SHARD",
        lora: Any = None,
        activation_checkpointing: bool = False,
        wrap_vision_blocks: bool = True,
        param_dtype: str = "bfloat16",
        reduce_dtype: str = "bfloat16",
        buffer_dtype: str = "bfloat16",
        cpu_ram_efficient_loading: bool = True,
        state_dict_type: str = "full",
        **kwargs: Any,
    ) -> None:
        self.check_settings(
            sharding_strategy=sharding_strategy,
            activation_checkpointing=activation_checkpointing,
            param_dtype=param_dtype,
            reduce_dtype=reduce_dtype,
            buffer_dtype=buffer_dtype,
            state_dict_type=state_dict_type,
        )
        self.lora = bool(lora)
        self.wrap_vision_blocks = bool(wrap_vision_blocks)
        self.cpu_ram_efficient_loading = bool(cpu_ram_efficient_loading)
        if self.lora:
            kwargs["use_orig_params"] = False  # peft's FSDP guide: needed for LoRA's memory savings
        if self.cpu_ram_efficient_loading:
            kwargs["sync_module_states"] = True
            kwargs["param_init_fn"] = self._materialize_meta
        mixed = MixedPrecision(
            param_dtype=strategy_dtype(param_dtype, "param_dtype"),
            reduce_dtype=strategy_dtype(reduce_dtype, "reduce_dtype"),
            buffer_dtype=strategy_dtype(buffer_dtype, "buffer_dtype"),
        )
        super().__init__(
            sharding_strategy=sharding_strategy,
            mixed_precision=mixed,
            state_dict_type=state_dict_type,  # type: ignore[arg-type]
            **kwargs,
        )
        self.wrap_classes: set[type[nn.Module]] = set()

    @staticmethod
    def check_settings(
        sharding_strategy: str = "FULL_SHARD",
        activation_checkpointing: bool = False,
        param_dtype: str = "bfloat16",
        reduce_dtype: str = "bfloat16",
        buffer_dtype: str = "bfloat16",
        state_dict_type: str = "full",
        **_: Any,
    ) -> None:
        """The strategy's plain settings (also checked by `dc.pipeline.validate` before anything is built).

        Raises:
            ConfigError: naming the key, its value and what is expected.
        """
        if sharding_strategy not in SHARDING:
            raise ConfigError(f"stage.sharding={sharding_strategy!r}: expected one of {SHARDING}")
        if activation_checkpointing:
            raise ConfigError(
                "trainer.strategy.activation_checkpointing is gone: set llm.activation_checkpointing="
                "none|selective|full (applied by the LLM under every strategy)"
            )
        for key, name in (("param_dtype", param_dtype), ("reduce_dtype", reduce_dtype), ("buffer_dtype", buffer_dtype)):
            strategy_dtype(name, key)
        if state_dict_type not in STATE_DICT_TYPES:
            raise ConfigError(
                f"trainer.strategy.state_dict_type={state_dict_type!r}: expected one of {STATE_DICT_TYPES}"
            )

    @property
    def state_dict_type(self) -> str:
        return self._state_dict_type

    def _materialize_meta(self, module: nn.Module) -> None:
        """FSDP `param_init_fn` on ranks that built on meta: allocate storage (values come from rank 0)."""
        tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if any(t.is_meta for t in tensors):
            module.to_empty(device=self.root_device, recurse=False)

    def configure_units(self, pl_module: nn.Module) -> None:
        """Resolve the wrap policy from the module's built VLM."""
        vlm = getattr(pl_module, "vlm", None)
        if vlm is None:
            raise RuntimeError("VLMFSDPStrategy: the LightningModule has no built `vlm` (configure_model not run?)")
        self.wrap_classes = wrap_units(vlm, wrap_vision_blocks=self.wrap_vision_blocks)
        policy: Any = LoraWrapPolicy(self.wrap_classes) if self.lora else ModuleWrapPolicy(self.wrap_classes)
        self.kwargs["auto_wrap_policy"] = policy
        self._activation_checkpointing_kwargs = {}
        log.info(
            "FSDP1 %s units %s, use_orig_params=%s",
            self.sharding_strategy.name,
            sorted(c.__name__ for c in self.wrap_classes),
            self.kwargs.get("use_orig_params"),
        )

    def _setup_model(self, model: nn.Module) -> nn.Module:
        self.configure_units(model)
        return super()._setup_model(model)
