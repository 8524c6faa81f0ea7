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

from dc.utils.errors import ConfigError

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
            raise ConfigError(f"connector.downsample.mode={mode!r}: expected one of {MODES}")
        if position not in POSITIONS:
            raise ConfigError(f"connector.downsample.position={position!r}: expected one of {POSITIONS}")
        if size is not None:
            ok = isinstance(size, Sequence) and len(size) == 2 and all(type(v) is int and v > 0 for v in size)
            if not ok:
                raise ConfigError(f"connector.downsample.size={size!r} must be two positive integers (or null)")
            size = (size[0], size[1])
        elif not (type(factor) is int and factor >= 1):
            raise ConfigError(f"connector.downsample.factor={factor!r} must be a positive integer (or set size)")
        self.factor = factor
        self.size = size
        self.mode = mode
        self.position = position
        self.grid = (int(grid[0]), int(grid[1]))
        self.target = self.target_for(self.grid)
        """Output grid for the encoder's native patch grid."""

    def target_for(self, grid: Sequence[int]) -> tuple[int, int]:
        """Output grid for an input grid: `size`, else ceil(rows / factor) × ceil(cols / factor)."""
        rows, cols = grid
        target = self.size if self.size is not None else (math.ceil(rows / self.factor), math.ceil(cols / self.factor))
        if target[0] > rows or target[1] > cols:
            raise ConfigError(f"connector.downsample target {target} is larger than the patch grid {(rows, cols)}")
        return target

    def num_tokens(self, tokens: int, grid: Sequence[int] | None = None) -> int:
        """Tokens out for `tokens` in whose first rows·cols form `grid` (native by default); the rest are kept."""
        rows, cols = grid if grid is not None else self.grid
        target = self.target_for((rows, cols))
        return tokens - rows * cols + target[0] * target[1]

    def forward(self, x: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        """[B, rows·cols + E, C] → [B, target rows·cols + E, C]; the E trailing tokens pass through unchanged."""
        rows, cols = grid if grid is not None else self.grid
        target = self.target_for((rows, cols))
        n = rows * cols
        grid_tokens, rest = x[:, :n], x[:, n:]
        b, _, c = grid_tokens.shape
        maps = grid_tokens.transpose(1, 2).reshape(b, c, rows, cols)
        if self.mode == "bilinear":
            maps = F.interpolate(maps.float(), size=target, mode="bilinear", align_corners=False).to(x.dtype)
        else:
            maps = F.adaptive_avg_pool2d(maps, target)
        small = maps.flatten(2).transpose(1, 2)
        return torch.cat([small, rest], dim=1) if rest.shape[1] else small
