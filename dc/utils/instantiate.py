"""The one place where Hydra configs become objects.

Hydra 1.4 will require a target allow-list for `instantiate`; keeping every call behind this function makes
that a one-line change.
"""

from __future__ import annotations

from typing import Any

import hydra.utils
from omegaconf import DictConfig

ALLOWED_PREFIXES = ("dc.", "lightning.", "torch.", "transformers.", "timm.", "peft.")


def instantiate(cfg: DictConfig | dict, *args: Any, **kwargs: Any) -> Any:
    """Instantiate `cfg` (a node with `_target_`), refusing targets outside the allowed packages."""
    target = cfg.get("_target_") if hasattr(cfg, "get") else None
    if target is None:
        raise ValueError(f"config node has no _target_: {cfg}")
    if not str(target).startswith(ALLOWED_PREFIXES):
        raise ValueError(f"_target_ {target!r} is outside the allowed packages {ALLOWED_PREFIXES}")
    kwargs.setdefault("_convert_", "all")  # plain dicts/lists for library constructors, never DictConfig
    return hydra.utils.instantiate(cfg, *args, **kwargs)
