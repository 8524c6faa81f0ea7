"""STI, Sparse Token Integration: pooled tokens of chosen layers appended after the final feature.

Each chosen layer is average-pooled along the token axis in raster order (1-D, kernel = stride = `pool`), as
the reference does: for CLIP's 24-wide grid a pooled token is a 1×8 strip; for SigLIP's 27-wide grid windows
straddle rows and the last token is dropped (729 → 91).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from dc.models.connectors.base import Connector
from dc.models.connectors.layers import resolve_layers
from dc.models.encoders.base import EncoderLayout, Tap
from dc.utils.errors import ConfigError


class SparseTokenIntegration(Connector):
    """`[X ; pool(H[l1]) ; pool(H[l2]) ; …]` along tokens → [B, N + len(layers)·⌊N/pool⌋, D].

    Args:
        layers: hidden-state indices whose pooled tokens are appended (`connector.layers`, paper: [7, 15]).
        pool: 1-D average-pool kernel and stride over tokens (`connector.pool`, paper: 8).
        **kwargs: see `Connector`.
    """

    def __init__(
        self, layout: EncoderLayout, llm_hidden_size: int, *, layers: Sequence[int], pool: int = 8, **kwargs: Any
    ) -> None:
        self.layers = resolve_layers(layers, "connector.layers", layout)
        if not isinstance(pool, int) or isinstance(pool, bool) or not 1 <= pool <= layout.num_patches:
            raise ConfigError(f"connector.pool={pool!r} must be an integer in 1..{layout.num_patches}")
        self.pool = pool
        super().__init__(layout, llm_hidden_size, **kwargs)

    @property
    def taps(self) -> list[Tap]:
        return [(self.final_layer,)] + [(i,) for i in self.layers]

    @property
    def fused_width(self) -> int:
        return self.layout.hidden_size

    def fused_tokens(self, num_patches: int) -> int:
        return num_patches + len(self.layers) * (num_patches // self.pool)

    def fuse(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        final, extra = features[0], features[1:]
        pooled = [F.avg_pool1d(f.to(final.dtype).transpose(1, 2), self.pool, self.pool).transpose(1, 2) for f in extra]
        return torch.cat([final, *pooled], dim=1)
