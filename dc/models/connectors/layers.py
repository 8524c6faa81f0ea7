"""Validation of the layer indices and groups that connectors take from config.

Indices follow Hugging Face `hidden_states` (0 = embedding output, negatives from the end). Every error names
the config key, the offending value and the valid range, and is raised before any weights load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dc.models.encoders.base import EncoderLayout
from dc.utils.errors import ConfigError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def valid_range(layout: EncoderLayout) -> str:
    """The valid hidden-state indices of `layout`, as error messages state them."""
    n = layout.num_states
    return f"0..{n - 1} (or {-n}..-1)"


def resolve_index(value: Any, key: str, layout: EncoderLayout) -> int:
    """Return `value` as a non-negative hidden-state index of `layout`, or raise naming `key`."""
    n = layout.num_states
    if not _is_int(value):
        raise ConfigError(
            f"{key}={value!r} must be an integer hidden_states index for encoder '{layout.name}' "
            f"(valid: {valid_range(layout)})"
        )
    if not -n <= value < n:
        raise ConfigError(
            f"{key}={value} is out of range for encoder '{layout.name}': valid hidden_states indices are "
            f"{valid_range(layout)}; 0 is the embedding output, the paper's 'layer k' is index k-1"
        )
    return value % n


def resolve_layers(values: Any, key: str, layout: EncoderLayout) -> list[int]:
    """Validate a non-empty list of single indices (STI / SCI `layers`)."""
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
        raise ConfigError(f"{key}={values!r} must be a non-empty list of hidden_states indices")
    return [resolve_index(v, f"{key}[{i}]", layout) for i, v in enumerate(values)]


def resolve_groups(values: Any, key: str, layout: EncoderLayout, allow_overlap: bool = False) -> list[tuple[int, ...]]:
    """Validate DCI `groups`: a non-empty list of inclusive [start, end] index ranges.

    Returns each group as the tuple of indices it averages. Empty ranges (start > end after resolving
    negatives) are rejected, and so are overlapping groups unless `allow_overlap`.
    """
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
        raise ConfigError(f"{key}={values!r} must be a non-empty list of [start, end] ranges")
    groups: list[tuple[int, ...]] = []
    for g, pair in enumerate(values):
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ConfigError(f"{key}[{g}]={pair!r} must be an inclusive [start, end] pair of indices")
        start = resolve_index(pair[0], f"{key}[{g}][0]", layout)
        end = resolve_index(pair[1], f"{key}[{g}][1]", layout)
        if start > end:
            raise ConfigError(
                f"{key}[{g}]={list(pair)} is an empty group (start {start} > end {end} after resolving negative "
                f"indices; valid: {valid_range(layout)}, ranges are inclusive)"
            )
        groups.append(tuple(range(start, end + 1)))
    if not allow_overlap:
        seen: dict[int, int] = {}
        for g, group in enumerate(groups):
            for i in group:
                if i in seen:
                    raise ConfigError(
                        f"{key}[{seen[i]}] and {key}[{g}] overlap at index {i}; "
                        f"set connector.allow_overlap=true if this is intended"
                    )
                seen[i] = g
    return groups
