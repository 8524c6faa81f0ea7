"""`torch.compile` of repeated blocks in place (`llm.compile`, `encoder.model.compile`).

Each block is compiled on its own (`nn.Module.compile`: names and state-dict keys unchanged, so checkpoints and
FSDP units are untouched); identical blocks share one compiled graph, so compiling 24 blocks costs about what one
costs. Blocks are compiled the first time the model enters training mode; a model built for inference only
(eval.py, the chat) is never compiled. Once compiled, the blocks also serve in-training validation and generation.

Dynamo caches compiled code per Python code object, with `recompile_limit` (8) entries each, and transformers
wraps every layer class's forward in the same `forward_with_checkpointing` function: the LLM's decoder layers and
the CLIP/SigLIP blocks share one cache. Training (grad) and no-grad calls (the frozen tower, validation,
generation), static then dynamic shapes, and None-or-tensor arguments each need an entry, so 8 is reached in an
ordinary run, after which new cases silently run eagerly. `compile_modules` raises the limit to
`RECOMPILE_LIMIT` (never lowers it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from dc.utils.errors import ConfigError


def compile_options(value: bool | Mapping[str, Any] | None, key: str) -> dict[str, Any] | None:
    """`torch.compile` keyword arguments from a config value: False/None -> None (off), True -> {}, a mapping ->
    its items (e.g. `{mode: max-autotune-no-cudagraphs}`); anything else is refused naming `key`.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    raise ConfigError(f"{key}={value!r}: expected true, false or a mapping of torch.compile options")


RECOMPILE_LIMIT = 64


def compile_modules(modules: list[nn.Module], options: dict[str, Any] | None = None) -> int:
    """`nn.Module.compile` each module in place (raising Dynamo's per-code recompile limit, see above); returns how
    many.
    """
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for module in modules:
        module.compile(**(options or {}))
    return len(modules)


def compile_on_first_training(owner: nn.Module, modules: list[nn.Module]) -> None:
    """Compile `modules` with `owner.compile_options` once: the first time `owner` enters training mode (call from
    its `train(mode=True)`); `owner.compiled` records that it happened. Nothing when compile is off.
    """
    if owner.compile_options is not None and not owner.compiled:
        compile_modules(modules, owner.compile_options)
        owner.compiled = True
