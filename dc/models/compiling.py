"""`torch.compile` of repeated blocks in place (`llm.compile`, `encoder.model.compile`).

Each block is compiled on its own (`nn.Module.compile`: names and state-dict keys unchanged, so checkpoints and
FSDP units are untouched); identical blocks share one compiled graph, so compiling 24 blocks costs about what one
costs. Blocks are compiled the first time the model enters training mode, never for inference-only use (eval,
chat), where batch shapes change every call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn


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
    raise ValueError(f"{key}={value!r}: expected true, false or a mapping of torch.compile options")


def compile_modules(modules: list[nn.Module], options: dict[str, Any] | None = None) -> int:
    """`nn.Module.compile` each module in place; returns how many."""
    for module in modules:
        module.compile(**(options or {}))
    return len(modules)
