"""The LLaVA-1.5 baseline connector: the final feature alone, then the projector."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dc.models.connectors.base import Connector
from dc.models.encoders.base import Tap


class MLPConnector(Connector):
    """LLaVA-1.5: `hidden_states[final_layer]` (CLS dropped) → mlp2x_gelu."""

    @property
    def taps(self) -> list[Tap]:
        return [(self.final_layer,)]

    @property
    def fused_width(self) -> int:
        return self.layout.hidden_size

    def fuse(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return features[0]
