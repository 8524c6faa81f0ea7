"""Storage dtypes: frozen parts in the compute dtype, trained parts in fp32 (master weights).

Under bf16 mixed precision every matmul runs in bf16 anyway, so an fp32 copy of a frozen weight buys nothing and
costs twice the memory — and more: autocast casts a frozen fp32 weight to bf16 at every use and, when the input
needs a gradient (the frozen LLM of stage 1, the base LLM under LoRA), keeps that bf16 copy for the backward, so a
frozen fp32 7B LLM holds 28 GB of fp32 weights *and* 14 GB of bf16 copies. Storing it in bf16 holds 14 GB, once.

`stage.frozen_dtype` (default `auto`): `auto` stores frozen parameters in the compute dtype (bf16 under
`bf16-mixed`/`bf16-true` or an FSDP param dtype of bf16; fp32 under `32-true`, i.e. nothing changes on CPU),
or a dtype name (`float32` keeps today's all-fp32 storage). Trained parameters are never cast.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from dc.utils.errors import ConfigError

log = logging.getLogger(__name__)

_PRECISION_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16, "64": torch.float64}


def strategy_dtype(name: str, key: str) -> torch.dtype:
    """The floating torch dtype `name` of the FSDP strategies' `trainer.strategy.<key>` (bfloat16, float32, ...).

    Raises:
        ConfigError: naming the key, for a name that is not a floating torch dtype.
    """
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"trainer.strategy.{key}={name!r}: expected a floating dtype name (bfloat16, float32)")
    return dtype


def compute_dtype(trainer: Any) -> torch.dtype:
    """The dtype the trainer computes in: the strategy's FSDP param dtype if it has one, else from `precision`."""
    if trainer is None:
        return torch.float32
    strategy = getattr(trainer, "strategy", None)
    param_dtype = getattr(strategy, "param_dtype", None)
    if isinstance(param_dtype, torch.dtype):
        return param_dtype
    mixed = getattr(strategy, "mixed_precision", None)  # Lightning's FSDPStrategy (FSDP1)
    if mixed is not None and getattr(mixed, "param_dtype", None) is not None:
        return mixed.param_dtype
    precision = str(getattr(trainer, "precision", "32-true"))
    return _PRECISION_DTYPES.get(precision.split("-")[0], torch.float32)


def resolve_frozen_dtype(value: str | None, trainer: Any) -> torch.dtype:
    """`stage.frozen_dtype` → a dtype (`auto`/None: the trainer's compute dtype)."""
    if value in (None, "auto"):
        return compute_dtype(trainer)
    dtype = getattr(torch, str(value), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"stage.frozen_dtype={value!r}: expected 'auto' or a floating dtype name (float32, bfloat16)")
    return dtype


def store_frozen(module: nn.Module, dtype: torch.dtype) -> int:
    """Cast every frozen floating-point parameter of `module` to `dtype` in place; returns how many elements moved.

    Buffers are left alone (rotary frequencies and the like are computed in fp32 on purpose).
    """
    moved = 0
    for param in module.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
            moved += param.numel()
    if moved:
        log.info("stored %s frozen parameters in %s", f"{moved:,}", dtype)
    return moved
