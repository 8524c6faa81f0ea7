"""The connector contract and the shared projector.

A connector owns the whole path from encoder features to LLM-width visual tokens:

    taps (encoder features) → fuse (parameter-free) → [downsample] → projector → [downsample] → [V, T, d_llm]

per view, then, per visual input, the image mode's merge (AnyRes: unpad + `image_newline`; plain images: none):

    view tokens of one input [V_i, T, d_llm] → merge → [tokens_i, d_llm]

Subclasses declare which taps they need (`taps`), how to fuse them (`fuse`), the fused width, and how many
tokens the fusion emits; this class adds the optional downsampling, the `mlp2x_gelu` projector (Linear → exact
GELU → Linear, PyTorch default init, as in LLaVA-1.5) and the image mode's merge module. Token counts are
arithmetic (`view_tokens`), so a connector built on the meta device answers them without allocating anything.

With Mini-Gemini (`mgm`, from the encoder config) the connector also owns the patch-info mining (`mining`), the
encoder's features end with its aux map, and the fusion becomes `mgm_fuse(taps, aux, mining, mode, fuse=fuse)`
(see `dc.models.connectors.mining`); token counts do not change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dc.models.connectors.downsample import Downsample
from dc.models.connectors.layers import resolve_index
from dc.models.connectors.mining import MGMSpec, PatchInfoMining, mgm_fuse
from dc.models.encoders.base import EncoderLayout, Tap, collect_taps
from dc.models.visual.base import ImageMode, ViewTokens, VisualMeta
from dc.utils.errors import ConfigError

PROJECTORS = ("mlp2x_gelu", "linear")


def build_projector(kind: str, in_features: int, out_features: int) -> nn.Module:
    """LLaVA's projectors: `mlp2x_gelu` (the paper's) or a single `linear` layer."""
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features))
    if kind == "linear":
        return nn.Sequential(nn.Linear(in_features, out_features))
    raise ConfigError(f"connector.projector={kind!r}: expected one of {PROJECTORS}")


class Connector(nn.Module, ABC):
    """The connector contract and its shared behaviour.

    What other layers use: `layout`, `taps` (for the encoder), `llm_hidden_size`, `forward` (views),
    `merge` (one input's views), `view_tokens` / `num_visual_tokens` (arithmetic), `image_mode`.

    Args:
        layout: the encoder's layout (indices are validated against it at construction).
        llm_hidden_size: d_llm, the width of the LLM's input embeddings.
        final_layer: hidden-state index of the "final" feature (LLaVA's select layer; -2 by default).
        projector: "mlp2x_gelu" or "linear".
        downsample: keyword arguments of `Downsample` (mode, factor, size, position), or None.
        image_mode: the `image` config's mode (plain single view by default); its merge module, if any (AnyRes:
            `image_newline`), becomes `self.image_merge` and trains with the connector.
        mgm: the encoder config's `mgm` node (Mini-Gemini: `MGMSpec`), or None; builds `self.mining`.
    """

    def __init__(
        self,
        layout: EncoderLayout,
        llm_hidden_size: int,
        *,
        final_layer: int = -2,
        projector: str = "mlp2x_gelu",
        downsample: dict[str, Any] | None = None,
        image_mode: ImageMode | None = None,
        mgm: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.final_layer = resolve_index(final_layer, "connector.final_layer", layout)
        self.downsample = Downsample(layout.grid, **dict(downsample)) if downsample else None
        self.projector = build_projector(projector, self.fused_width, llm_hidden_size)
        self.llm_hidden_size = llm_hidden_size
        self.image_mode = image_mode
        self.image_merge = image_mode.build_merge(llm_hidden_size) if image_mode is not None else None
        self.mgm = MGMSpec.from_config(mgm) if mgm else None
        self.mining: PatchInfoMining | None = (
            None
            if self.mgm is None
            else self.mgm.build(
                layout,
                fused_width=self.fused_width,
                fused_tokens=self.fused_tokens(layout.num_patches),
                image_mode=image_mode,
            )
        )

    # --- what subclasses define -------------------------------------------------------------------
    @property
    @abstractmethod
    def taps(self) -> list[Tap]:
        """Features requested from the encoder, final feature first."""

    @property
    @abstractmethod
    def fused_width(self) -> int:
        """Channel width of the fused features (the projector's input width)."""

    def fused_tokens(self, num_patches: int) -> int:
        """Tokens the fusion emits for `num_patches` patch tokens (before any downsampling)."""
        return num_patches

    @abstractmethod
    def fuse(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Parameter-free fusion of one [B, N, D] tensor per tap into [B, T, fused_width]."""

    # --- shared behaviour ---------------------------------------------------------------------------
    def view_tokens(self, grid: Sequence[int] | None = None) -> ViewTokens:
        """The token grid and extra tokens emitted per view for a patch grid (the encoder's by default)."""
        rows, cols = grid if grid is not None else self.layout.grid
        extra = self.fused_tokens(rows * cols) - rows * cols
        if self.downsample is not None:
            rows, cols = self.downsample.target_for((rows, cols))
        return ViewTokens(int(rows), int(cols), int(extra))

    def num_visual_tokens(self, grid: Sequence[int] | None = None) -> int:
        """Visual tokens per view for a patch grid (the encoder's by default): a plain image's token count."""
        return self.view_tokens(grid).total

    def merge(self, views: torch.Tensor, meta: VisualMeta) -> torch.Tensor:
        """One image input's view tokens [V, T, d_llm] → its [meta.tokens, d_llm] tokens (the image mode's merge)."""
        if self.image_merge is None:
            return views.reshape(-1, views.shape[-1])
        return self.image_merge(views, meta, self.view_tokens())

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

    def fuse_features(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The encoder's output → fused [B, T, fused_width]: `fuse`, or with Mini-Gemini the taps and the aux map
        (the last item) through `mgm_fuse`.
        """
        if self.mining is None:
            return self.fuse(features)
        n = len(self.taps)
        if len(features) != n + 1:
            raise ValueError(
                f"the connector mines a Mini-Gemini aux map (encoder.mgm) and expects {n} taps followed by the aux "
                f"map, got {len(features)} features (the encoder must be a dual tower, e.g. DualEncoder)"
            )
        return mgm_fuse(features[:n], features[n], self.mining, self.mgm.mode, self.layout.grid, fuse=self.fuse)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Encoder features (taps, then the aux map with Mini-Gemini) → [B, T, d_llm] visual tokens."""
        x = self.fuse_features(features)
        x = x.to(self.projector[0].weight.dtype)
        if self.downsample is not None and self.downsample.position == "pre":
            x = self.downsample(x)
        x = self.projector(x)
        if self.downsample is not None and self.downsample.position == "post":
            x = self.downsample(x)
        return x
