"""Activation checkpointing of decoder layers as a choice (`llm.activation_checkpointing`), and layer compilation.

* `none`: autograd keeps every activation a decoder layer's backward needs;
* `selective`: keep the outputs of the compute-heavy ops (matmuls and attention) and recompute the cheap ones
  (norms, rotary embedding, activation functions, residual adds, casts) in the backward: a fraction of the memory
  of `none` for almost no extra FLOPs (the recomputed ops are elementwise);
* `full`: keep only each layer's input and recompute the whole layer in the backward (one extra forward of the
  decoder layers: +33 % of their training FLOPs; the hardware-FLOPs utilisation counts it, see
  `dc.training.throughput`).

Implemented with HF's own per-layer checkpointing (`GradientCheckpointingLayer`, non-reentrant
`torch.utils.checkpoint`; `selective` adds a `create_selective_checkpoint_contexts` policy). Nothing is wrapped,
so parameter names, state-dict keys, LoRA injection and FSDP units are unchanged, and it works the same on one
device, under DDP and under FSDP1/FSDP2. It is active only in training mode.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from dc.utils.errors import ConfigError

MODES = ("none", "selective", "full")

_aten = torch.ops.aten
# Ops whose outputs `selective` keeps: matmuls and every SDPA/flash kernel (names that exist in this torch build).
_SAVED = {
    getattr(_aten, name)
    for name in (
        "mm",
        "addmm",
        "bmm",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_flash_attention_forward",
        "_efficient_attention_forward",
    )
    if hasattr(_aten, name)
}


def _is_saved(op: Any) -> bool:
    if getattr(op, "overloadpacket", op) in _SAVED:
        return True
    name = str(op)
    return "varlen_attn" in name or "flash_attn" in name  # torch.nn.attention.varlen / flash-attn custom ops


def selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Keep matmul and attention outputs; recompute everything else."""
    return CheckpointPolicy.MUST_SAVE if _is_saved(op) else CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_kwargs(mode: str) -> dict[str, Any] | None:
    """`torch.utils.checkpoint` keyword arguments for `mode` (None for "none")."""
    if mode not in MODES:
        raise ConfigError(f"llm.activation_checkpointing={mode!r}: expected one of {MODES}")
    if mode == "none":
        return None
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if mode == "selective":
        kwargs["context_fn"] = partial(create_selective_checkpoint_contexts, selective_policy)
    return kwargs


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """Enable `mode` on an HF `PreTrainedModel`'s decoder layers (a no-op for "none")."""
    kwargs = checkpoint_kwargs(mode)
    if kwargs is None:
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"{type(model).__name__} does not support activation checkpointing (llm.activation_checkpointing)"
        )
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:  # transformers >= 5.22
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
