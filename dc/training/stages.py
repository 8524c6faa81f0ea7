"""Stage freezing: which parts of the VLM train, stated in config and logged."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dc.models.vlm import VLM
from dc.utils.errors import ConfigError

log = logging.getLogger(__name__)

PARTS = ("encoder", "connector", "llm")


def part_of(name: str) -> str:
    """The part ("encoder", "connector" or "llm") a parameter name belongs to (names relative to the VLM)."""
    for component in name.split("."):  # wrappers add prefixes ("module.", "_forward_module.", "vlm.")
        if component in PARTS:
            return component
    raise ValueError(f"parameter {name!r} belongs to no VLM part")


def apply_freezing(vlm: VLM, train: Sequence[str]) -> dict[str, dict[str, int]]:
    """Make exactly the parts in `train` trainable; return and log trainable/frozen counts per part."""
    unknown = set(train) - set(PARTS)
    if unknown:
        raise ConfigError(f"stage.train={list(train)}: unknown parts {sorted(unknown)}; expected a subset of {PARTS}")
    if "encoder" in train and vlm.encoder.freeze:
        raise ConfigError("stage.train includes 'encoder' but encoder.model.freeze=true")
    counts: dict[str, dict[str, int]] = {}
    for part in PARTS:
        module = getattr(vlm, part)
        module.requires_grad_(part in train)
        n = sum(p.numel() for p in module.parameters())
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        counts[part] = {"trainable": trainable, "frozen": n - trainable}
        log.info("%-9s trainable %12s  frozen %12s", part, f"{trainable:,}", f"{n - trainable:,}")
    return counts
