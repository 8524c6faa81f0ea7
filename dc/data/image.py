"""Image preprocessing with the encoder's Hugging Face image processor (built offline from config values).

`square` hands the image to the processor as is (stage 1 in the reference: CLIP resizes the short side and
centre-crops; SigLIP resizes to a square); `pad` first pads it to a square with the processor's mean colour,
image centred (stage 2 and evaluation).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

ASPECTS = ("pad", "square")


def expand_to_square(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """Pad `image` to a square of its longer side, centred, filled with `colour`."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), colour)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


class ImagePreprocessor:
    """PIL image → [3, H, W] float tensor for the encoder.

    Args:
        processor: a Hugging Face image processor (e.g. `CLIPImageProcessor`).
        aspect: "pad" or "square".
    """

    def __init__(self, processor: Any, aspect: str = "pad") -> None:
        if aspect not in ASPECTS:
            raise ValueError(f"image aspect={aspect!r}: expected one of {ASPECTS}")
        self.processor = processor
        self.aspect = aspect
        self.fill = tuple(int(255 * m) for m in processor.image_mean)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self.aspect == "pad":
            image = expand_to_square(image, self.fill)
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]
