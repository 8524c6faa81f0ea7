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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

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


def mgm_fuse(
    features: Sequence[torch.Tensor],
    aux: torch.Tensor,
    mining: PatchInfoMining,
    mode: str = "after",
    grid: Sequence[int] | None = None,
) -> torch.Tensor:
    """Mini-Gemini mining composed with a channel fusion (DCI / SCI taps, or the final feature alone).

    Args:
        features: the connector's taps, final feature first, each [B, N, D] (DCI CLIP-L: X, G1, G2).
        aux: [B, C_aux, H, W] aux map.
        mining: built with `low_width = mining_query_width(mode, D, len(features))`.
        mode: "after": mine on the final feature only, then concat: [X + mine(X) ‖ G1 ‖ G2]
            (MGM's computation intact, DC channels added). "before": concat first, then mine on the fused
            tokens: F + mine(F) with F = [X ‖ G1 ‖ G2] (query width (1 + groups)·D).
        grid: (rows, cols) of the tokens; None: square.

    Returns:
        [B, N, sum of widths] in the mining's dtype, ready for the projector.
    """
    if mode not in MGM_FUSE_MODES:
        raise ValueError(f"connector.mgm.mode={mode!r}: expected one of {MGM_FUSE_MODES}")
    if not features:
        raise ValueError("mgm_fuse: no features")
    dtype = mining.dtype
    parts = [f.to(dtype) for f in features]
    widths = [p.shape[-1] for p in parts]
    expected = widths[0] if mode == "after" else sum(widths)
    if mining.low_width != expected:
        raise ValueError(
            f"connector.mgm.mode={mode!r} needs a mining query width of {expected} for taps of widths {widths}, "
            f"the mining module has {mining.low_width}"
        )
    if mode == "after":
        final = parts[0] + mining(parts[0], aux, grid)
        return torch.cat([final, *parts[1:]], dim=-1)
    fused = torch.cat(parts, dim=-1)
    return fused + mining(fused, aux, grid)


def mining_query_width(mode: str, hidden_size: int, num_taps: int) -> int:
    """Query (and key/value/output) width of the mining for `mgm_fuse`: D ("after") or num_taps·D ("before")."""
    if mode not in MGM_FUSE_MODES:
        raise ValueError(f"connector.mgm.mode={mode!r}: expected one of {MGM_FUSE_MODES}")
    return hidden_size if mode == "after" else hidden_size * num_taps


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
