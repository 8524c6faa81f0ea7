"""SCI, Sparse Channel Integration: the final feature and chosen layers, concatenated along channels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dc.models.connectors.base import Connector
from dc.models.connectors.layers import resolve_layers
from dc.models.encoders.base import EncoderLayout, Tap


class SparseChannelIntegration(Connector):
    """`[X ‖ H[l1] ‖ H[l2] ‖ …]` → [B, N, (1 + len(layers))·D]; the paper uses layers [7, 15].

    Args:
        layers: hidden-state indices concatenated after the final feature (`connector.layers`).
        **kwargs: see `Connector`.
    """

    def __init__(self, layout: EncoderLayout, llm_hidden_size: int, *, layers: Sequence[int], **kwargs: Any) -> None:
        self.layers = resolve_layers(layers, "connector.layers", layout)
        super().__init__(layout, llm_hidden_size, **kwargs)

    @property
    def taps(self) -> list[Tap]:
        return [(self.final_layer,)] + [(i,) for i in self.layers]

    @property
    def fused_width(self) -> int:
        return self.layout.hidden_size * (1 + len(self.layers))

    def fuse(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        dtype = features[0].dtype
        return torch.cat([f.to(dtype) for f in features], dim=-1)
