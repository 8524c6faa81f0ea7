"""AnyRes (LLaVA-NeXT's dynamic high resolution): a base view plus a grid of crops, merged after the projector.

Geometry, as LLaVA-NeXT (and the Dense Connector reference, which copies it) computes it:

* candidate resolutions ("pinpoints") are (width, height) pairs, by default multiples of the encoder's input side
  s: 1×2, 2×1, 2×2, 1×3, 3×1 (`grids`, each [width, height] in units of s);
* best resolution: the largest *effective* resolution min(w'·h', w·h), where (w', h') is the image scaled to fit
  the candidate keeping its aspect ratio (`int` of each side), ties broken by the least wasted area;
* the image is resized to fit (the scaled side `ceil`-ed, capped at the target), pasted centred on black, cut into
  s × s crops in raster order; the base view is the whole image resized to s × s (aspect ratio not kept);
* every view goes through the encoder and the connector on its own (any Dense Connector variant, including the
  efficient downsampling); then `merge`:
  - `spatial_unpad` (default): the crops' token grids reassembled into one (rows·g_r) × (cols·g_c) map, the rows or
    columns that only cover the black padding removed (`unpad_bounds`: the reference's integer arithmetic, kept
    height `int(h · W / w)`, padding `(H − kept) // 2` removed on each side, so an odd remainder keeps one more),
    a learned `image_newline` vector appended at the end of every row, flattened; the base view's tokens first;
  - `spatial`: the same map without unpadding or newlines;
  - `flat`: every view's tokens in order, base first.
  Tokens that a connector emits after its grid (STI's pooled tokens) are not spatial: the base view keeps its own,
  the crops' follow the merged map, crop by crop.

Example: SigLIP (27 × 27 per view), image 1000 × 600 (w × h): best grid 2 × 2 (768 × 768), map 54 × 54, kept rows
int(600 · 54 / 1000) = 32, padding 11 → 32 rows of 54 + 1 newline: 729 + 32 · 55 = 2489 tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from dc.models.visual.base import IMAGE, ImageMode, ViewTokens, VisualMeta
from dc.utils.errors import ConfigError

MERGES = ("spatial_unpad", "spatial", "flat")
DEFAULT_GRIDS = ((1, 2), (2, 1), (2, 2), (1, 3), (3, 1))


def select_best_resolution(size: tuple[int, int], candidates: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The candidate (width, height) with the largest effective resolution, then the least waste (first wins ties)."""
    width, height = size
    best, best_effective, best_waste = None, -1, math.inf
    for cand_w, cand_h in candidates:
        scale = min(cand_w / width, cand_h / height)
        scaled_w, scaled_h = int(width * scale), int(height * scale)
        effective = min(scaled_w * scaled_h, width * height)
        waste = cand_w * cand_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (cand_w, cand_h), effective, waste
    if best is None:
        raise ConfigError("image.grids / image.pinpoints: no candidate resolution")
    return best


def fitted_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the image resized to fit `target` keeping its aspect ratio (LLaVA's resize_and_pad)."""
    width, height = size
    target_w, target_h = target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return target_w, min(math.ceil(height * scale_w), target_h)
    return min(math.ceil(width * scale_h), target_w), target_h


def crop_boxes(target: tuple[int, int], crop: int) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of the `crop` × `crop` tiles of a `target` (width, height) canvas, raster order."""
    width, height = target
    return [(x, y, x + crop, y + crop) for y in range(0, height, crop) for x in range(0, width, crop)]


def unpad_bounds(rows: int, cols: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the part of a rows × cols token map that covers the image, not its padding.

    The reference's `unpad_image`, float operations in its order: when the image is wider than the map, the kept
    height is `int(h · (cols / w))` and `(rows − kept) // 2` rows go from each side; otherwise the same on columns.
    """
    width, height = size
    if width / height > cols / rows:
        kept = int(height * (cols / width))
        pad = (rows - kept) // 2
        return pad, rows - pad, 0, cols
    kept = int(width * (rows / height))
    pad = (cols - kept) // 2
    return 0, rows, pad, cols - pad


class AnyRes(ImageMode):
    """The AnyRes layout (`image=anyres`).

    Args:
        grids: candidate resolutions as [width, height] multiples of the encoder's input side (`image.grids`).
        pinpoints: explicit candidate (width, height) pairs in pixels (LLaVA's `image_grid_pinpoints`); each must be
            a multiple of the encoder's input side. Overrides `grids` when set.
        merge: "spatial_unpad" (default), "spatial" or "flat".
    """

    size_dependent = True

    def __init__(
        self,
        grids: Sequence[Sequence[int]] = DEFAULT_GRIDS,
        pinpoints: Sequence[Sequence[int]] | None = None,
        merge: str = "spatial_unpad",
    ) -> None:
        if merge not in MERGES:
            raise ConfigError(f"image.merge={merge!r}: expected one of {MERGES}")
        self.merge = merge
        self.grids = self._pairs(grids, "image.grids")
        self.pinpoints = self._pairs(pinpoints, "image.pinpoints") if pinpoints else None

    @staticmethod
    def _pairs(values: Sequence[Sequence[int]], key: str) -> tuple[tuple[int, int], ...]:
        ok = isinstance(values, Sequence) and len(values) > 0
        pairs = []
        for pair in values if ok else ():
            if not (isinstance(pair, Sequence) and len(pair) == 2 and all(type(v) is int and v > 0 for v in pair)):
                ok = False
                break
            pairs.append((int(pair[0]), int(pair[1])))
        if not ok:
            raise ConfigError(
                f"{key}={values!r} must be a non-empty list of [width, height] pairs of positive integers"
            )
        return tuple(pairs)

    def candidates(self, image_size: int) -> list[tuple[int, int]]:
        """Candidate (width, height) resolutions in pixels for an encoder of input side `image_size`."""
        if self.pinpoints is None:
            return [(w * image_size, h * image_size) for w, h in self.grids]
        bad = [p for p in self.pinpoints if p[0] % image_size or p[1] % image_size]
        if bad:
            raise ConfigError(f"image.pinpoints {bad} are not multiples of the encoder's input side {image_size}")
        return list(self.pinpoints)

    def layout(self, size: tuple[int, int], image_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(chosen (width, height) in pixels, crop grid (rows, cols)) for an image of `size`."""
        if size[0] <= 0 or size[1] <= 0:
            raise ValueError(f"image size {size} must be positive")
        target = select_best_resolution(size, self.candidates(image_size))
        return target, (target[1] // image_size, target[0] // image_size)

    def merged_tokens(self, size: tuple[int, int], grid: tuple[int, int], view: ViewTokens) -> int:
        """Tokens after merging, for an image of `size` laid out as `grid` crops (rows, cols)."""
        crops = grid[0] * grid[1]
        if self.merge == "flat":
            return (1 + crops) * view.total
        rows, cols = grid[0] * view.rows, grid[1] * view.cols
        if self.merge == "spatial":
            spatial = rows * cols
        else:
            top, bottom, left, right = unpad_bounds(rows, cols, size)
            spatial = (bottom - top) * (right - left + 1)
        return view.total + spatial + crops * view.extra

    def meta(self, size: tuple[int, int], view: ViewTokens, image_size: int) -> VisualMeta:
        _, grid = self.layout(size, image_size)
        tokens = self.merged_tokens(size, grid, view)
        return VisualMeta(views=1 + grid[0] * grid[1], tokens=tokens, kind=IMAGE, size=tuple(size), grid=grid)

    def build_merge(self, llm_hidden_size: int) -> nn.Module:
        return AnyResMerge(self.merge, llm_hidden_size)

    def __repr__(self) -> str:
        return f"AnyRes(grids={self.grids}, pinpoints={self.pinpoints}, merge={self.merge!r})"


class AnyResMerge(nn.Module):
    """Merges one AnyRes input's view tokens; owns the learned `image_newline` (spatial_unpad only).

    `image_newline` is initialised N(0, 1)/√d_llm as in LLaVA-NeXT and trains with the connector (it lives inside
    the connector module, so stage freezing, checkpoints and FSDP treat it as connector weight).
    """

    def __init__(self, merge: str, llm_hidden_size: int) -> None:
        super().__init__()
        self.merge = merge
        if merge == "spatial_unpad":
            self.image_newline = nn.Parameter(torch.randn(llm_hidden_size) / math.sqrt(llm_hidden_size))

    def forward(self, views: torch.Tensor, meta: VisualMeta, view: ViewTokens) -> torch.Tensor:
        """[1 + crops, T, d] view tokens (base view first) → [meta.tokens, d]."""
        d = views.shape[-1]
        if self.merge == "flat":
            return views.reshape(-1, d)
        base, crops = views[0], views[1:]
        g_rows, g_cols = meta.grid
        n = view.rows * view.cols
        spatial = crops[:, :n].reshape(g_rows, g_cols, view.rows, view.cols, d)
        spatial = spatial.permute(0, 2, 1, 3, 4).reshape(g_rows * view.rows, g_cols * view.cols, d)
        if self.merge == "spatial_unpad":
            top, bottom, left, right = unpad_bounds(spatial.shape[0], spatial.shape[1], meta.size)
            spatial = spatial[top:bottom, left:right]
            newline = self.image_newline.to(spatial.dtype).expand(spatial.shape[0], 1, d)
            spatial = torch.cat([spatial, newline], dim=1)
        parts = [base, spatial.reshape(-1, d)]
        if view.extra:
            parts.append(crops[:, n:].reshape(-1, d))
        return torch.cat(parts)
