"""DCI, Dense Channel Integration (the paper's best): the final feature and group means, along channels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dc.models.connectors.base import Connector
from dc.models.connectors.layers import resolve_groups
from dc.models.encoders.base import EncoderLayout, Tap
from dc.utils.errors import ConfigError


class DenseChannelIntegration(Connector):
    """`[X ‖ mean(H[g1]) ‖ mean(H[g2]) ‖ …]` → [B, N, (1 + len(groups))·D].

    The encoder accumulates each group's running sum, so the hidden states are never all kept.

    Args:
        groups: inclusive [start, end] hidden-state ranges (`connector.groups`); CLIP-L [[0, 11], [12, 23]],
            SigLIP-so400m [[0, 12], [13, 25]].
        allow_overlap: accept groups that share indices.
        **kwargs: see `Connector`.
    """

    def __init__(
        self,
        layout: EncoderLayout,
        llm_hidden_size: int,
        *,
        groups: Sequence[Sequence[int]],
        allow_overlap: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(allow_overlap, bool):
            raise ConfigError(f"connector.allow_overlap={allow_overlap!r} must be true or false")
        self.groups = resolve_groups(groups, "connector.groups", layout, allow_overlap)
        super().__init__(layout, llm_hidden_size, **kwargs)

    @property
    def taps(self) -> list[Tap]:
        return [(self.final_layer,)] + list(self.groups)

    @property
    def fused_width(self) -> int:
        return self.layout.hidden_size * (1 + len(self.groups))

    def fuse(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        dtype = features[0].dtype
        return torch.cat([f.to(dtype) for f in features], dim=-1)
