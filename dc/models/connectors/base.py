"""The connector contract and the shared projector.

A connector owns the whole path from encoder features to LLM-width visual tokens:

    taps (encoder features) → fuse (parameter-free) → [downsample] → projector → [downsample] → [B, T, d_llm]

Subclasses declare which taps they need (`taps`), how to fuse them (`fuse`), the fused width, and how many
tokens the fusion emits; this class adds the optional downsampling and the `mlp2x_gelu` projector
(Linear → exact GELU → Linear, PyTorch default init, as in LLaVA-1.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dc.models.connectors.downsample import Downsample
from dc.models.connectors.layers import resolve_index
from dc.models.encoders.base import EncoderLayout, Tap, collect_taps

PROJECTORS = ("mlp2x_gelu", "linear")


def build_projector(kind: str, in_features: int, out_features: int) -> nn.Module:
    """LLaVA's projectors: `mlp2x_gelu` (the paper's) or a single `linear` layer."""
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features))
    if kind == "linear":
        return nn.Sequential(nn.Linear(in_features, out_features))
    raise ValueError(f"connector.projector={kind!r}: expected one of {PROJECTORS}")


class Connector(nn.Module):
    """Base class of all connectors.

    Args:
        layout: the encoder's layout (indices are validated against it at construction).
        llm_hidden_size: d_llm, the width of the LLM's input embeddings.
        final_layer: hidden-state index of the "final" feature (LLaVA's select layer; -2 by default).
        projector: "mlp2x_gelu" or "linear".
        downsample: keyword arguments of `Downsample` (mode, factor, size, position), or None.
    """

    def __init__(
        self,
        layout: EncoderLayout,
        llm_hidden_size: int,
        *,
        final_layer: int = -2,
        projector: str = "mlp2x_gelu",
        downsample: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.final_layer = resolve_index(final_layer, "connector.final_layer", layout)
        self.downsample = Downsample(layout.grid, **dict(downsample)) if downsample else None
        self.projector = build_projector(projector, self.fused_width, llm_hidden_size)
        self.llm_hidden_size = llm_hidden_size

    # --- what subclasses define -------------------------------------------------------------------
    @property
    def taps(self) -> list[Tap]:
        """Features requested from the encoder, final feature first."""
        raise NotImplementedError

    @property
    def fused_width(self) -> int:
        """Channel width of the fused features (the projector's input width)."""
        raise NotImplementedError

    def fused_tokens(self, num_patches: int) -> int:
        """Tokens the fusion emits for `num_patches` patch tokens (before any downsampling)."""
        return num_patches

    def fuse(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Parameter-free fusion of one [B, N, D] tensor per tap into [B, T, fused_width]."""
        raise NotImplementedError

    # --- shared behaviour ---------------------------------------------------------------------------
    def num_visual_tokens(self, grid: Sequence[int] | None = None) -> int:
        """Visual tokens handed to the LLM per image for a patch grid (the encoder's by default)."""
        rows, cols = grid if grid is not None else self.layout.grid
        tokens = self.fused_tokens(rows * cols)
        return self.downsample.num_tokens(tokens, (rows, cols)) if self.downsample is not None else tokens

    def fuse_hidden_states(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """The parameter-free fusion applied to an HF `hidden_states` tuple (prefix tokens still present).

        Works on the output of a stock `output_hidden_states=True` forward (L + 1 states) or of a tower truncated
        after the deepest needed block (indices are already resolved to non-negative ones). Returns
        [B, fused_tokens, fused_width], before any downsampling and the projector.
        """
        deepest = max(max(t) for t in self.taps)
        if len(hidden_states) <= deepest:
            raise ValueError(
                f"got {len(hidden_states)} hidden states but the connector needs index {deepest} "
                f"(encoder '{self.layout.name}' has {self.layout.num_states})"
            )
        return self.fuse(collect_taps(hidden_states, self.taps, self.layout.num_prefix_tokens))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Encoder taps → [B, T, d_llm] visual tokens."""
        x = self.fuse(features)
        x = x.to(self.projector[0].weight.dtype)
        if self.downsample is not None and self.downsample.position == "pre":
            x = self.downsample(x)
        x = self.projector(x)
        if self.downsample is not None and self.downsample.position == "post":
            x = self.downsample(x)
        return x
