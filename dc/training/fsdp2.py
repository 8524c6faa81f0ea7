"""FSDP2 for the VLM (`trainer=fsdp`): `fully_shard` per decoder layer / vision block / connector, then the VLM,
through Lightning's `ModelParallelStrategy` (Lightning's route to FSDP2; it calls no `fully_shard` itself, the
LightningModule does in `configure_model`, which calls `VLMFSDP2Strategy.parallelize`).

Why FSDP2 over FSDP1 (`trainer=fsdp1`, `dc.training.fsdp`): parameters are sharded one by one as DTensors, so
frozen and trainable parameters (and dtypes) mix freely inside a unit — no flat parameters, no
`use_orig_params` trade-off, LoRA without wrapping every adapter as its own unit, frozen parts stored in bf16 next
to fp32 master weights — and it is the API PyTorch maintains (FSDP1 is deprecated).

* units: every LLM decoder layer (`LanguageModel.decoder_layer_classes()`), every vision block
  (`VisionEncoder.blocks()`, `wrap_vision_blocks`), the connector, and the VLM itself (embeddings, norms,
  `lm_head`, the encoder stem);
* sharding (`stage.sharding`): `FULL_SHARD` (reshard after forward), `SHARD_GRAD_OP` (keep the gathered
  parameters from forward to backward), `HYBRID_SHARD` (a 2-D mesh: shard inside a node, replicate across nodes);
* mixed precision: `MixedPrecisionPolicy(param_dtype, reduce_dtype)`; `reduce_dtype: auto` reduces gradients in
  fp32 when the LLM trains fully (full fine-tune) and in the param dtype otherwise (connector-only, LoRA);
* trained parameters keep their fp32 storage (the master weights), frozen ones are stored in the compute dtype
  (`dc.training.precision`, done before sharding);
* `cpu_ram_efficient_loading`: only global rank 0 reads the pretrained LLM; the other ranks build it on the meta
  device, allocate their shards after sharding and receive rank 0's values (`set_model_state_dict(...,
  broadcast_from_rank0=True)`, buffers by broadcast);
* checkpoints: `state_dict_type: full` gathers one file on rank 0 (holding only what a checkpoint must keep, see
  `DCModule.on_save_checkpoint`); `sharded` writes a DTensor (DCP) folder from every rank, which resumes on any
  number of devices and consolidates to one file with `python -m dc.export.consolidate`;
* gradient accumulation (`reduce_grads_per`): `micro_batch` (default) reduce-scatters every micro-batch's
  gradients and accumulates them sharded; `step` keeps them unsharded (in the reduce dtype) until the last
  micro-batch of the accumulation window and reduce-scatters once per optimizer step — one collective instead of
  one per micro-batch, for the memory of an unsharded gradient of every trained parameter (worth it when those
  fit: the connector, LoRA, a model well below the GPU's size);
* `generate` is registered as an FSDP forward method (predictions during training gather the root parameters).
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from dc.training.precision import strategy_dtype
from dc.utils.errors import ConfigError

log = logging.getLogger(__name__)

SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD")
REDUCE_GRADS_PER = ("micro_batch", "step")
STATE_DICT_TYPES = ("full", "sharded")


def fsdp_units(vlm: nn.Module, *, wrap_vision_blocks: bool = True) -> list[nn.Module]:
    """The modules `fully_shard` is applied to, innermost first (the VLM itself last)."""
    classes = tuple(vlm.llm.decoder_layer_classes())
    if not classes:
        raise ValueError(f"LLM {type(vlm.llm.model).__name__} declares no decoder layer classes (_no_split_modules)")
    # Every block the encoder declares (`block_classes`: both towers of a dual encoder), not only `blocks()`.
    block_classes = tuple(vlm.encoder.block_classes())
    units: list[nn.Module] = (
        [m for m in vlm.encoder.modules() if isinstance(m, block_classes)] if wrap_vision_blocks else []
    )
    units.append(vlm.connector)
    units += [m for m in vlm.llm.modules() if isinstance(m, classes)]
    return [*units, vlm]


def shard_vlm(
    vlm: nn.Module,
    *,
    mesh: Any,
    param_dtype: torch.dtype,
    reduce_dtype: torch.dtype,
    reshard_after_forward: bool = True,
    wrap_vision_blocks: bool = True,
    cpu_offload: bool = False,
) -> list[nn.Module]:
    """`fully_shard` every unit of `vlm` (see `fsdp_units`) on `mesh`; returns the units.

    Also registers `generate` as an FSDP forward method, so generation gathers the root parameters.
    """
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    options = {
        "mesh": mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype),
        "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
        "reshard_after_forward": reshard_after_forward,
    }
    units = fsdp_units(vlm, wrap_vision_blocks=wrap_vision_blocks)
    for unit in units:
        fully_shard(unit, **options)
    if hasattr(vlm, "generate"):
        register_fsdp_forward_method(vlm, "generate")
    return units


class VLMFSDP2Strategy(ModelParallelStrategy):
    """Lightning `ModelParallelStrategy` (FSDP2) configured for a `DCModule`.

    Args:
        sharding_strategy: `stage.sharding`: FULL_SHARD, SHARD_GRAD_OP or HYBRID_SHARD.
        param_dtype: compute dtype of the gathered parameters.
        reduce_dtype: gradient reduce-scatter dtype; "auto": float32 for full fine-tunes, else `param_dtype`.
        wrap_vision_blocks: make every vision block a unit.
        cpu_ram_efficient_loading: only rank 0 reads the pretrained LLM (see the module docstring).
        state_dict_type: "full" (one file) or "sharded" (a DCP folder).
        cpu_offload: keep sharded parameters, gradients and optimizer state in host memory (`CPUOffloadPolicy`).
        reduce_grads_per: "micro_batch" or "step": when gradients are reduce-scattered under gradient
            accumulation (see the module docstring).
        **kwargs: further `ModelParallelStrategy` arguments (`process_group_backend`, `timeout`).
    """

    def __init__(
        self,
        *,
        sharding_strategy: str = "FULL_SHARD",
        param_dtype: str = "bfloat16",
        reduce_dtype: str = "auto",
        wrap_vision_blocks: bool = True,
        cpu_ram_efficient_loading: bool = True,
        state_dict_type: str = "full",
        cpu_offload: bool = False,
        reduce_grads_per: str = "micro_batch",
        **kwargs: Any,
    ) -> None:
        self.check_settings(
            sharding_strategy=sharding_strategy,
            param_dtype=param_dtype,
            reduce_dtype=reduce_dtype,
            state_dict_type=state_dict_type,
            reduce_grads_per=reduce_grads_per,
        )
        super().__init__(save_distributed_checkpoint=state_dict_type == "sharded", **kwargs)
        self.sharding_strategy = sharding_strategy
        self.param_dtype = strategy_dtype(param_dtype, "param_dtype")
        self.reduce_dtype_setting = reduce_dtype
        self.wrap_vision_blocks = bool(wrap_vision_blocks)
        self.cpu_ram_efficient_loading = bool(cpu_ram_efficient_loading)
        self._state_dict_type = state_dict_type
        self.cpu_offload = bool(cpu_offload)
        self.reduce_grads_per = reduce_grads_per
        self.units: list[nn.Module] = []

    @staticmethod
    def check_settings(
        sharding_strategy: str = "FULL_SHARD",
        param_dtype: str = "bfloat16",
        reduce_dtype: str = "auto",
        state_dict_type: str = "full",
        reduce_grads_per: str = "micro_batch",
        **_: Any,
    ) -> None:
        """The strategy's plain settings (also checked by `dc.pipeline.validate` before anything is built).

        Raises:
            ConfigError: naming the key, its value and the allowed values.
        """
        if sharding_strategy not in SHARDING:
            raise ConfigError(f"stage.sharding={sharding_strategy!r}: expected one of {SHARDING} (trainer=fsdp)")
        if state_dict_type not in STATE_DICT_TYPES:
            raise ConfigError(
                f"trainer.strategy.state_dict_type={state_dict_type!r}: expected one of {STATE_DICT_TYPES}"
            )
        if reduce_grads_per not in REDUCE_GRADS_PER:
            raise ConfigError(
                f"trainer.strategy.reduce_grads_per={reduce_grads_per!r}: expected one of {REDUCE_GRADS_PER}"
            )
        strategy_dtype(param_dtype, "param_dtype")
        if reduce_dtype != "auto":
            strategy_dtype(reduce_dtype, "reduce_dtype")

    @property
    def state_dict_type(self) -> str:
        return self._state_dict_type

    # --- process layout ----------------------------------------------------------------------------
    def setup_environment(self) -> None:
        # Pure data parallelism: Lightning's mesh (data_parallel × tensor_parallel) is world × 1.
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    def fsdp_mesh(self) -> Any:
        """The mesh `fully_shard` uses: 1-D over all ranks, or (nodes, devices per node) for HYBRID_SHARD."""
        if self.sharding_strategy != "HYBRID_SHARD":
            return self.device_mesh["data_parallel"]
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(
            self.root_device.type, (self.num_nodes, self.num_processes), mesh_dim_names=("replicate", "shard")
        )

    def reduce_dtype(self, stage: Any) -> torch.dtype:
        """`reduce_dtype` resolved for a stage (`auto`: float32 when the LLM trains fully)."""
        if self.reduce_dtype_setting != "auto":
            return strategy_dtype(self.reduce_dtype_setting, "reduce_dtype")
        full_finetune = "llm" in list(stage.get("train") or []) and not stage.get("lora")
        return torch.float32 if full_finetune else self.param_dtype

    @contextmanager
    def block_backward_sync(self) -> Generator[None, None, None]:
        """Lightning runs the backward of every micro-batch but an accumulation window's last inside this: with
        `reduce_grads_per=step` FSDP2 skips their reduce-scatter (gradients stay unsharded and accumulate), so the
        window's last backward reduces the sum once. With `micro_batch`, nothing changes.
        """
        root = self.units[-1] if self.units and self.reduce_grads_per == "step" else None
        if root is None:
            yield
            return
        root.set_requires_gradient_sync(False)  # recursive: every unit under the VLM
        try:
            yield
        finally:
            root.set_requires_gradient_sync(True)

    # --- sharding ----------------------------------------------------------------------------------
    def parallelize(self, pl_module: nn.Module) -> None:
        """`fully_shard` the module's built VLM (called from `DCModule.configure_model`)."""
        vlm = getattr(pl_module, "vlm", None)
        if vlm is None:
            raise RuntimeError("VLMFSDP2Strategy: the LightningModule has no built `vlm` (configure_model not run?)")
        broadcast = self._broadcasts_weights(pl_module)
        full_state = vlm.state_dict() if broadcast and self.global_rank == 0 else {}
        reduce = self.reduce_dtype(pl_module.stage)
        self.units = shard_vlm(
            vlm,
            mesh=self.fsdp_mesh(),
            param_dtype=self.param_dtype,
            reduce_dtype=reduce,
            reshard_after_forward=self.sharding_strategy != "SHARD_GRAD_OP",
            wrap_vision_blocks=self.wrap_vision_blocks,
            cpu_offload=self.cpu_offload,
        )
        if broadcast:
            self._receive_rank0_weights(vlm, full_state)
        blocks = len(vlm.encoder.blocks()) if self.wrap_vision_blocks else 0
        log.info(
            "FSDP2 %s: %d units (%d vision blocks, connector, %d decoder layers, VLM), param %s, reduce %s per %s",
            self.sharding_strategy,
            len(self.units),
            blocks,
            len(self.units) - 2 - blocks,
            self.param_dtype,
            reduce,
            self.reduce_grads_per.replace("_", "-"),
        )

    def _broadcasts_weights(self, pl_module: nn.Module) -> bool:
        """Whether ranks > 0 built the pretrained LLM on meta (the same answer on every rank)."""
        llm_cfg = getattr(pl_module, "model_cfg", {}).get("llm") or {}
        return self.cpu_ram_efficient_loading and self.world_size > 1 and bool(llm_cfg.get("pretrained"))

    def _receive_rank0_weights(self, vlm: nn.Module, full_state: dict[str, torch.Tensor]) -> None:
        """Ranks > 0 allocate their shards and get rank 0's parameters; every buffer is broadcast from rank 0."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        if self.global_rank != 0:
            vlm.to_empty(device=self.root_device)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(vlm, full_state, options=options)
        for buffer in vlm.buffers():
            dist.broadcast(buffer.data, src=0)
