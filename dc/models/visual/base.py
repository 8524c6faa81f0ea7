"""The visual-input contract shared by data, model and evaluation code.

An `<image>` in a conversation stands for one *visual input*: a single image, an AnyRes layout (a base view plus
crops) or a video (frames). The encoder and the connector see its *views* ([V, 3, H, W], all at the encoder's
resolution, batched with every other input's views); what merges one input's view tokens into the tokens the LLM
gets (AnyRes unpadding with row-end newlines, video temporal pooling) runs after the projector and belongs to the
input's mode, not to the VLM.

Every input knows its token count before any weight is built: `ImageMode.meta` computes it by arithmetic from the
image size, the mode's layout and the connector's per-view output (`ViewTokens`, from `Connector.view_tokens`).
The `VisualMeta` travels with the sample through the collate (one entry per input, in order), the splice, length
grouping and the FLOP accounting.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import nn

IMAGE, VIDEO = "image", "video"


class ViewTokens(NamedTuple):
    """What the connector emits for one view: a `rows` × `cols` token grid (raster order) then `extra` tokens.

    `extra` is STI's pooled tokens (0 for the other connectors); the grid is the patch grid, downsampled by the
    Efficient Dense Connector when it is on.
    """

    rows: int
    cols: int
    extra: int = 0

    @property
    def total(self) -> int:
        """Tokens per view."""
        return self.rows * self.cols + self.extra


class VisualMeta(NamedTuple):
    """One visual input of a sample.

    Attributes:
        views: views the encoder sees (1 for a plain image, 1 + crops for AnyRes, frames for a video).
        tokens: tokens the LLM gets for this input after merging; the sample holds that many image slots.
        kind: "image" or "video" (which merge applies).
        size: the original (width, height) in pixels (AnyRes unpadding), (0, 0) when unused.
        grid: AnyRes crop layout (rows, cols) of the chosen resolution; (1, 1) otherwise.
    """

    views: int
    tokens: int
    kind: str = IMAGE
    size: tuple[int, int] = (0, 0)
    grid: tuple[int, int] = (1, 1)


class ImageMode(ABC):
    """How an image becomes views and how the views' tokens merge (configured by the `image` config group).

    Attributes:
        size_dependent: whether the token count depends on the image's size (then the data layer reads the size
            before tokenising; otherwise no image is opened to count tokens).
    """

    size_dependent: bool = False

    @abstractmethod
    def meta(self, size: tuple[int, int], view: ViewTokens, image_size: int) -> VisualMeta:
        """The `VisualMeta` of an image of `size` (width, height) for an encoder of input side `image_size`."""

    def build_merge(self, llm_hidden_size: int) -> nn.Module | None:
        """The module that merges one input's view tokens (None: the views' tokens are used as they are)."""
        return None


def flat_merge(views: torch.Tensor) -> torch.Tensor:
    """[V, T, d] view tokens → [V·T, d], views in order (a plain image: V = 1)."""
    return views.reshape(-1, views.shape[-1])
