"""Mini-Gemini's patch-info mining, and its composition with the Dense Connector's channel fusion.

Mini-Gemini (dvlab-research/MGM, `mgm_arch.py`: `unified_resampler`, `encode_images`) refines each low-res
CLIP token with the high-res ConvNeXt features of its own image region:

    X   [B, N, C]           low-res tokens (CLIP-L/336 penultimate layer, patches: N = 24·24, C = 1024)
    A   [B, C_aux, H, W]    aux map (ConvNeXt-L at 768 px, 4 stages at stride 4: C_aux = 2880, H = W = 192)
    regions: token n = (r, c) of the rows×cols grid owns the ph×pw block A[:, :, r·ph:(r+1)·ph, c·pw:(c+1)·pw]
             (ph = H / rows, pw = W / cols; MGM: 8×8 = 64 positions), flattened row-major → R [B, N, S, C_aux]
    q = Linear_q(LN(X))          C     → C     (`vlm_uni_query_projector`)
    k = Linear_k(LN(R))          C_aux → C     (`vlm_uni_aux_projector`)
    v = Linear_v(LN(R))          C_aux → C     (`vlm_uni_val_projector`)
    mined[b, n] = softmax_s(nan_to_num(q[b, n] · (k[b, n, s] / sqrt(C)))) @ v[b, n]      [B, N, C]
    X' = X + mined, then `mm_projector` (mlp2x_gelu) on X'.

There is no separate MLP in the mining: the "MLP" of the paper's figure is the `mm_projector` that follows.
The three projectors are fresh `nn.Sequential(LayerNorm, Linear)` modules with PyTorch default init, trained
in both stages (MGM creates them after freezing the model in stage 1).

Wiring: an encoder config with an `mgm` node (`MGMSpec`: aux width, aux stride, placement) makes every connector
own a `PatchInfoMining` (`Connector.mining`, trained and checkpointed with the projector) and fuse through
`mgm_fuse`; the dual encoder (`dc.models.encoders.dual.DualEncoder`) returns its taps followed by the aux map.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dc.models.encoders.base import EncoderLayout
from dc.models.visual.base import ImageMode
from dc.models.visual.single import SingleView
from dc.utils.errors import ConfigError

MGM_FUSE_MODES = ("after", "before")
MGM_PREFIX = "vlm_uni_"
"""State-dict prefix of the mining projectors in MGM checkpoints (`model.vlm_uni_query_projector.0.weight`…)."""


def region_positions(low_grid: Sequence[int], aux_grid: Sequence[int]) -> torch.Tensor:
    """Which aux positions each low-res token attends to.

    Args:
        low_grid: (rows, cols) of the low-res tokens (raster order: token n = row n // cols, column n % cols).
        aux_grid: (H, W) of the aux map; H divisible by rows and W by cols.

    Returns:
        LongTensor [rows·cols, (H / rows)·(W / cols)]: row n lists the flat aux indices `y·W + x` of token n's
        sub-patch in the order the mining sees them (row-major inside the sub-patch).
    """
    rows, cols = (int(v) for v in low_grid)
    height, width = (int(v) for v in aux_grid)
    _check_divisible((rows, cols), (height, width))
    ph, pw = height // rows, width // cols
    r = torch.arange(rows).view(rows, 1, 1, 1)
    c = torch.arange(cols).view(1, cols, 1, 1)
    dy = torch.arange(ph).view(1, 1, ph, 1)
    dx = torch.arange(pw).view(1, 1, 1, pw)
    return ((r * ph + dy) * width + (c * pw + dx)).reshape(rows * cols, ph * pw)


class PatchInfoMining(nn.Module):
    """MGM's patch-info mining: each low-res token attends to the aux features of its own sub-patch.

    Submodule names mirror MGM's (`vlm_uni_{query,aux,val}_projector` → `{query,aux,val}_projector`), so MGM
    weights load through `mgm_state_dict`.

    Args:
        low_width: C, width of the low-res tokens (the query); also the width of keys, values and output.
        aux_width: C_aux, channels of the aux map.
    """

    def __init__(self, low_width: int, aux_width: int) -> None:
        super().__init__()
        self.low_width = int(low_width)
        self.aux_width = int(aux_width)
        self.query_projector = nn.Sequential(nn.LayerNorm(low_width), nn.Linear(low_width, low_width))
        self.aux_projector = nn.Sequential(nn.LayerNorm(aux_width), nn.Linear(aux_width, low_width))
        self.val_projector = nn.Sequential(nn.LayerNorm(aux_width), nn.Linear(aux_width, low_width))

    @property
    def dtype(self) -> torch.dtype:
        return self.query_projector[1].weight.dtype

    def regions(self, aux: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """[B, C_aux, H, W] → [B, rows·cols, ph·pw, C_aux]: each token's sub-patch, row-major inside it."""
        rows, cols = (int(v) for v in grid)
        batch, chans, height, width = aux.shape
        _check_divisible((rows, cols), (height, width))
        ph, pw = height // rows, width // cols
        x = aux.permute(0, 2, 3, 1).reshape(batch, rows, ph, cols, pw, chans)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, rows * cols, ph * pw, chans)

    def forward(self, low: torch.Tensor, aux: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        """Mined features to add to `low`.

        Args:
            low: [B, N, C] low-res tokens in raster order.
            aux: [B, C_aux, H, W] aux map.
            grid: (rows, cols) of the tokens; None: square, sqrt(N) (MGM's assumption).

        Returns:
            [B, N, C] in the module's dtype (inputs are cast to it).
        """
        if low.dim() != 3 or low.shape[-1] != self.low_width:
            raise ValueError(f"mining: low-res tokens must be [B, N, {self.low_width}], got {tuple(low.shape)}")
        if aux.dim() != 4 or aux.shape[1] != self.aux_width or aux.shape[0] != low.shape[0]:
            raise ValueError(
                f"mining: aux map must be [{low.shape[0]}, {self.aux_width}, H, W], got {tuple(aux.shape)}"
            )
        grid = _grid_for(low.shape[1], grid)
        dtype = self.dtype
        query = self.query_projector(low.to(dtype))  # [B, N, C]
        region = self.regions(aux.to(dtype), grid)  # [B, N, S, C_aux]
        key = self.aux_projector(region)  # [B, N, S, C]
        value = self.val_projector(region)  # [B, N, S, C]
        # As MGM: the key is scaled before the product; NaN/inf logits are cleaned before the softmax.
        logits = query.unsqueeze(2) @ (key.transpose(-1, -2) / key.shape[-1] ** 0.5)  # [B, N, 1, S]
        return (logits.nan_to_num().softmax(-1) @ value).squeeze(2)  # [B, N, C]

    def param_positions(self, num_tokens: int, aux_positions: int) -> int:
        """Σ parameters × positions they run over, per image: the query projector over the `num_tokens` low-res
        tokens, the key and value projectors over every aux position (the regions tile the map, so each position
        is projected once). Forward FLOPs ≈ 2 × this (the attention itself, 4·N·S·C, is not counted, as
        attention scores are not elsewhere).
        """
        query = sum(p.numel() for p in self.query_projector.parameters())
        aux = sum(p.numel() for m in (self.aux_projector, self.val_projector) for p in m.parameters())
        return query * int(num_tokens) + aux * int(aux_positions)


def channel_concat(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """[X ‖ G1 ‖ …] along channels (DCI / SCI's fusion; the default of `mgm_fuse`)."""
    return torch.cat(list(features), dim=-1)


def mgm_fuse(
    features: Sequence[torch.Tensor],
    aux: torch.Tensor,
    mining: PatchInfoMining,
    mode: str = "after",
    grid: Sequence[int] | None = None,
    fuse: Callable[[Sequence[torch.Tensor]], torch.Tensor] = channel_concat,
) -> torch.Tensor:
    """Mini-Gemini mining composed with a connector's fusion (DCI / SCI / STI taps, or the final feature alone).

    Args:
        features: the connector's taps, final feature first, each [B, N, D] (DCI CLIP-L: X, G1, G2).
        aux: [B, C_aux, H, W] aux map.
        mining: query width D ("after") or the fused width ("before"; `mining_query_width` for a channel concat).
        mode: "after": mine on the final feature only, then fuse: fuse([X + mine(X), G1, G2]) (MGM's
            computation intact, DC's channels added: [X + mine(X) ‖ G1 ‖ G2] for DCI). "before": fuse first,
            then mine on the fused tokens: F + mine(F) with F = fuse([X, G1, G2]) (query width (1 + groups)·D
            for DCI; the fusion must keep one token per patch).
        grid: (rows, cols) of the tokens; None: square.
        fuse: the connector's parameter-free fusion (`Connector.fuse`); channel concatenation by default.

    Returns:
        [B, T, fused width] in the mining's dtype, ready for the (optional downsampling and the) projector.
    """
    if mode not in MGM_FUSE_MODES:
        raise ConfigError(f"encoder.mgm.mode={mode!r}: expected one of {MGM_FUSE_MODES}")
    if not features:
        raise ValueError("mgm_fuse: no features")
    dtype = mining.dtype
    parts = [f.to(dtype) for f in features]
    if mode == "after":
        _check_query_width(mining, parts[0].shape[-1], mode, [p.shape[-1] for p in parts])
        return fuse([parts[0] + mining(parts[0], aux, grid), *parts[1:]]).to(dtype)
    fused = fuse(parts).to(dtype)
    _check_query_width(mining, fused.shape[-1], mode, [p.shape[-1] for p in parts])
    return fused + mining(fused, aux, grid)


def _check_query_width(mining: PatchInfoMining, expected: int, mode: str, widths: list[int]) -> None:
    if mining.low_width != expected:
        raise ConfigError(
            f"encoder.mgm.mode={mode!r} needs a mining query width of {expected} for taps of widths {widths}, "
            f"the mining module has {mining.low_width}"
        )


def mining_query_width(mode: str, hidden_size: int, num_taps: int) -> int:
    """Query (and key/value/output) width of the mining for a channel concat of `num_taps` taps of width D:
    D ("after") or num_taps·D ("before").
    """
    if mode not in MGM_FUSE_MODES:
        raise ConfigError(f"encoder.mgm.mode={mode!r}: expected one of {MGM_FUSE_MODES}")
    return hidden_size if mode == "after" else hidden_size * num_taps


@dataclass(frozen=True)
class MGMSpec:
    """What a connector needs to know about Mini-Gemini, from the encoder config's `mgm` node (no weights).

    Attributes:
        aux_width: C_aux, channels of the aux map (ConvNeXt-L, 4 stages: 2880); checked against the built tower.
        aux_stride: input pixels per aux-map position (ConvNeXt stride-4 stage: 4 → 768 px gives 192 × 192).
        mode: "after" (default: MGM's computation intact, DC's channels added) or "before" (see `mgm_fuse`).
    """

    aux_width: int
    aux_stride: int
    mode: str = "after"

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> MGMSpec:
        """Parse and validate the `encoder.mgm` node."""
        unknown = set(node) - {"aux_width", "aux_stride", "mode"}
        if unknown:
            raise ConfigError(f"encoder.mgm: unknown keys {sorted(unknown)}; expected aux_width, aux_stride, mode")
        spec = cls(
            aux_width=_positive(node.get("aux_width"), "encoder.mgm.aux_width"),
            aux_stride=_positive(node.get("aux_stride"), "encoder.mgm.aux_stride"),
            mode=str(node.get("mode", "after")),
        )
        if spec.mode not in MGM_FUSE_MODES:
            raise ConfigError(f"encoder.mgm.mode={spec.mode!r}: expected one of {MGM_FUSE_MODES}")
        return spec

    def aux_grid(self, layout: EncoderLayout) -> tuple[int, int]:
        """(H, W) of the aux map for the encoder's input pixels (MGM: 768 / 4 → (192, 192))."""
        side = int(layout.input_size)
        if side % self.aux_stride:
            raise ConfigError(
                f"encoder.layout.input_size={side} is not divisible by encoder.mgm.aux_stride={self.aux_stride}"
            )
        return side // self.aux_stride, side // self.aux_stride

    def build(
        self, layout: EncoderLayout, *, fused_width: int, fused_tokens: int, image_mode: ImageMode | None
    ) -> PatchInfoMining:
        """The connector's mining module, after checking the layout admits it.

        Args:
            layout: the encoder's layout (low-res grid, width, input side).
            fused_width: the connector's fused width (the query width in mode "before").
            fused_tokens: tokens the connector's fusion emits for the patch grid ("before" needs one per patch).
            image_mode: the `image` mode; only single views are supported.
        """
        if image_mode is not None and not isinstance(image_mode, SingleView):
            raise ValueError(
                f"encoder '{layout.name}' (Mini-Gemini mining) with image={type(image_mode).__name__}: not supported; "
                f"MGM's patch-info mining is defined for one {layout.input_size} px view per image (MGM-HD's "
                f"crops are not implemented); use image=single"
            )
        rows, cols = layout.grid
        height, width = self.aux_grid(layout)
        if height % rows or width % cols:
            raise ValueError(
                f"encoder '{layout.name}': the aux map {height}x{width} (encoder.layout.input_size="
                f"{layout.input_size} / encoder.mgm.aux_stride={self.aux_stride}) does not divide into the "
                f"{rows}x{cols} token grid; MGM: 768 / 4 = 192 = 8 x 24"
            )
        if self.mode == "before" and fused_tokens != layout.num_patches:
            raise ConfigError(
                f"encoder.mgm.mode=before mines the fused tokens, one per patch, but this connector's fusion emits "
                f"{fused_tokens} tokens for {layout.num_patches} patches (STI appends pooled tokens); use "
                f"encoder.mgm.mode=after"
            )
        query = layout.hidden_size if self.mode == "after" else int(fused_width)
        return PatchInfoMining(query, self.aux_width)


def mgm_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mining weights of an MGM checkpoint (`[model.]vlm_uni_*_projector.{0,1}.*`, e.g. from its
    `mm_projector.bin`) renamed for `PatchInfoMining.load_state_dict`.
    """
    out = {}
    for key, value in state_dict.items():
        head, sep, tail = key.partition(MGM_PREFIX)
        if sep and head in ("", "model.", "base_model.model.model."):
            out[tail] = value
    return out


def _positive(value: Any, key: str) -> int:
    if type(value) is not int or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    return value


def _grid_for(num_tokens: int, grid: Sequence[int] | None) -> tuple[int, int]:
    if grid is None:
        side = round(num_tokens**0.5)
        if side * side != num_tokens:
            raise ValueError(f"mining: {num_tokens} tokens are not a square grid; pass grid=(rows, cols)")
        return side, side
    rows, cols = (int(v) for v in grid)
    if rows * cols != num_tokens:
        raise ValueError(f"mining: grid {rows}x{cols} does not hold {num_tokens} tokens")
    return rows, cols


def _check_divisible(low: tuple[int, int], aux: tuple[int, int]) -> None:
    if aux[0] % low[0] or aux[1] % low[1]:
        raise ValueError(
            f"mining: aux map {aux[0]}x{aux[1]} is not divisible into the {low[0]}x{low[1]} token grid "
            "(check encoder_aux.image_size / stages against the low-res grid)"
        )
