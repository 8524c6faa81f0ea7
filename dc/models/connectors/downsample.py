"""The Efficient Dense Connector's token downsampling: 2-D interpolation of the patch grid.

The paper reduces CLIP-L's 24×24 = 576 visual tokens to 12×12 = 144 with bilinear interpolation; the
reference never released this code. Our choices (stated, and tested):

* tokens are reshaped in raster order to their [rows, cols] grid, resized, and flattened back;
* `mode="bilinear"` uses `F.interpolate(..., align_corners=False, antialias=False)`; `mode="avgpool"` uses
  `F.adaptive_avg_pool2d`, which for an exact factor is the plain k×k mean;
* the target is `size` when given, else `ceil(rows / factor) × ceil(cols / factor)`: 24×24 → 12×12 and
  SigLIP's 27×27 → 14×14 (196 tokens, 26.9 %) rather than dropping the 27th row and column;
* tokens after the grid (STI's pooled tokens) pass through unchanged;
* it runs before the projector by default (`position="pre"`, cheaper: the projector sees 4× fewer tokens),
  or after it (`position="post"`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("bilinear", "avgpool")
POSITIONS = ("pre", "post")


class Downsample(nn.Module):
    """Resize the leading grid tokens of [B, T, C] visual features to a smaller grid."""

    def __init__(
        self,
        grid: Sequence[int],
        *,
        mode: str = "bilinear",
        factor: int | None = 2,
        size: Sequence[int] | None = None,
        position: str = "pre",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"connector.downsample.mode={mode!r}: expected one of {MODES}")
        if position not in POSITIONS:
            raise ValueError(f"connector.downsample.position={position!r}: expected one of {POSITIONS}")
        rows, cols = int(grid[0]), int(grid[1])
        if size is not None:
            if len(size) != 2 or not all(isinstance(s, int) and 0 < s for s in size):
                raise ValueError(f"connector.downsample.size={list(size)!r} must be two positive integers")
            target = (int(size[0]), int(size[1]))
        elif isinstance(factor, int) and not isinstance(factor, bool) and factor >= 1:
            target = (math.ceil(rows / factor), math.ceil(cols / factor))
        else:
            raise ValueError(f"connector.downsample.factor={factor!r} must be a positive integer (or set size)")
        if target[0] > rows or target[1] > cols:
            raise ValueError(f"connector.downsample target {target} is larger than the patch grid {(rows, cols)}")
        self.grid = (rows, cols)
        self.target = target
        self.mode = mode
        self.position = position

    def num_tokens(self, tokens: int) -> int:
        """Tokens out for `tokens` in (the grid part shrinks, anything after it is kept)."""
        return tokens - self.grid[0] * self.grid[1] + self.target[0] * self.target[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = self.grid
        n = rows * cols
        grid, rest = x[:, :n], x[:, n:]
        b, _, c = grid.shape
        maps = grid.transpose(1, 2).reshape(b, c, rows, cols)
        if self.mode == "bilinear":
            maps = F.interpolate(maps.float(), size=self.target, mode="bilinear", align_corners=False).to(x.dtype)
        else:
            maps = F.adaptive_avg_pool2d(maps, self.target)
        small = maps.flatten(2).transpose(1, 2)
        return torch.cat([small, rest], dim=1) if rest.shape[1] else small
