"""The data half of the visual-input contract: an image (bytes or PIL) → its views [V, 3, H, W] and `VisualMeta`.

`VisualProcessor` pairs the model's `ImageMode` (`dc.models.visual`) with the encoder's image processor and the
connector's per-view token grid (`Connector.view_tokens`, computed on the meta device: no weights). For a
size-independent mode (a plain image) the token count needs no image at all; for AnyRes it needs only the image's
size, read from the header (`meta_from_bytes`), so tokenisation and length grouping never decode pixels.

Views:

* `SingleView`: one view, `pad` (square with the mean colour, centred) or `square` (the processor alone), through
  the fast `ImagePreprocessor` path;
* `AnyRes`: the base view (the image resized to s × s) then the crops of the image resized to fit the chosen
  resolution and pasted centred on black (`dc.models.visual.anyres` has the geometry), each through the processor.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from dc.data.image import ImagePreprocessor
from dc.models.visual.anyres import AnyRes, crop_boxes, fitted_size
from dc.models.visual.base import ImageMode, ViewTokens, VisualMeta
from dc.models.visual.single import SingleView


def image_size_from_bytes(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header (no decoding); raises like PIL for undecodable bytes."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size


class VisualProcessor:
    """Images → views and metas for one model.

    Args:
        mode: the `image` config's mode.
        processor: the encoder's Hugging Face image processor (`encoder.image`).
        view: tokens the connector emits per view (`Connector.view_tokens()`).
        image_size: the side of the views the encoder takes (`encoder.layout.input_size`: the tower's resolution,
            or a dual tower's high-res side).
        frame_aspect: how video frames are made square ("pad", the reference's default, or "square").
    """

    def __init__(
        self, mode: ImageMode, processor: Any, view: ViewTokens, image_size: int, frame_aspect: str = "pad"
    ) -> None:
        self.mode = mode
        self.processor = processor
        self.view = view
        self.image_size = image_size
        aspect = mode.aspect if isinstance(mode, SingleView) else "square"
        self.single = ImagePreprocessor(processor, aspect=aspect)
        self.frame = ImagePreprocessor(processor, aspect=frame_aspect)

    @property
    def size_dependent(self) -> bool:
        """Whether the token count depends on the image's size."""
        return self.mode.size_dependent

    def meta_for_size(self, size: tuple[int, int]) -> VisualMeta:
        """The `VisualMeta` of an image of `size` (width, height)."""
        return self.mode.meta(size, self.view, self.image_size)

    @property
    def plain_meta(self) -> VisualMeta:
        """The meta of any image in a size-independent mode."""
        return self.mode.meta((self.image_size, self.image_size), self.view, self.image_size)

    def meta_from_bytes(self, data: bytes) -> VisualMeta:
        """The meta of an encoded image (its header only is read, and only when the mode needs the size)."""
        if not self.size_dependent:
            return self.plain_meta
        return self.meta_for_size(image_size_from_bytes(data))

    def from_bytes(self, data: bytes) -> tuple[torch.Tensor, VisualMeta]:
        """Encoded image → (views [V, 3, H, W], meta)."""
        if isinstance(self.mode, SingleView):
            return self.single.from_bytes(data).unsqueeze(0), self.plain_meta
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return self(img)

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, VisualMeta]:
        """PIL image → (views [V, 3, H, W], meta)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if isinstance(self.mode, SingleView):
            return self.single(image).unsqueeze(0), self.plain_meta
        if isinstance(self.mode, AnyRes):
            return self.anyres_views(image), self.meta_for_size(image.size)
        raise TypeError(f"no preprocessing for image mode {type(self.mode).__name__}")

    def anyres_views(self, image: Image.Image) -> torch.Tensor:
        """[1 + crops, 3, s, s]: the base view, then the crops in raster order."""
        assert isinstance(self.mode, AnyRes)
        s = self.image_size
        target, _ = self.mode.layout(image.size, s)
        new_w, new_h = fitted_size(image.size, target)
        canvas = Image.new("RGB", target, (0, 0, 0))
        canvas.paste(
            image.resize((new_w, new_h), Image.Resampling.BICUBIC), ((target[0] - new_w) // 2, (target[1] - new_h) // 2)
        )
        views = [image.resize((s, s), Image.Resampling.BICUBIC)] + [canvas.crop(box) for box in crop_boxes(target, s)]
        return self.processor(images=views, return_tensors="pt")["pixel_values"]

    def frames(self, frames: Sequence[Image.Image]) -> torch.Tensor:
        """Video frames → [T, 3, H, W], each as one padded (by default) view."""
        return torch.stack([self.frame(f if f.mode == "RGB" else f.convert("RGB")) for f in frames])

    def empty(self) -> torch.Tensor:
        """[0, 3, H, W] for a sample without images."""
        return torch.zeros(0, 3, *self.single.output_size())


def build_visual_processor(
    cfg: Any, *, aspect: str | None = None, allowed: Any = None, frame_aspect: str = "pad"
) -> VisualProcessor:
    """The `VisualProcessor` of a model config (`encoder`, `connector`, `llm`, `image` nodes); nothing is loaded.

    Args:
        cfg: the model config (train.py's root config, or a checkpoint's stored model config).
        aspect: for a single-view mode, override its aspect ("pad" for evaluation, as the reference).
        allowed: target allow-list (checkpoint configs pass the model allow-list).
        frame_aspect: video frames' aspect.
    """
    from dc.models.builder import build_connector, build_image_mode, encoder_layout
    from dc.utils.instantiate import instantiate

    mode = build_image_mode(cfg, allowed)
    if aspect is not None and isinstance(mode, SingleView):
        mode = SingleView(aspect)
    view = build_connector(cfg, device="meta", allowed=allowed).view_tokens()
    processor = instantiate(cfg.encoder.image, allowed=allowed)
    return VisualProcessor(mode, processor, view, encoder_layout(cfg.encoder).input_size, frame_aspect=frame_aspect)
