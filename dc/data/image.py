"""Image preprocessing with the encoder's Hugging Face image processor (built offline from config values).

`square` hands the image to the processor as is (stage 1 in the reference: CLIP resizes the short side and
centre-crops; SigLIP resizes to a square); `pad` first pads it to a square with the processor's mean colour,
image centred (stage 2 and evaluation).

`from_bytes` is the training loaders' entry: for 8-bit RGB JPEG it decodes straight to a uint8 [3, H, W] tensor
with torchvision (libjpeg-turbo, the same pixels as PIL: tested) and pads in torch, which skips PIL's decode-to-PIL
and PIL-to-numpy copies (~25 % of the per-image cost); anything else (PNG, grey, palette, CMYK, 16-bit, other
formats, undecodable bytes, a torchvision without `decode_image`) goes through PIL exactly as `__call__`. PNG is
not given to torchvision: its libpng path crashes the process (SIGSEGV) on a PNG whose compressed data is damaged
("IDAT: incorrect data check"), where PIL raises an `OSError` that the loaders count as `corrupt_image`. torchvision 0.29 deprecates its image decoders (torchcodec replaces them); the fallback keeps this
working when they are removed.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch
from PIL import Image

from dc.models.visual.single import check_aspect

try:  # deprecated since torchvision 0.29 in favour of torchcodec; without it every image takes the PIL path
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # pragma: no cover - depends on the installed torchvision
    decode_image = None


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
        check_aspect(aspect, "image aspect")
        self.processor = processor
        self.aspect = aspect
        self.fill = tuple(int(255 * m) for m in processor.image_mean)

        self._size: tuple[int, int] | None = None

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":  # JPEGs are RGB already; convert() would copy them for nothing
            image = image.convert("RGB")
        if self.aspect == "pad":
            image = expand_to_square(image, self.fill)
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def from_bytes(self, data: bytes) -> torch.Tensor:
        """Encoded image bytes → [3, H, W]; equal to `self(Image.open(BytesIO(data)))`.

        Raises:
            PIL.UnidentifiedImageError / OSError / ValueError: bytes that PIL cannot decode (a corrupt image).
        """
        with Image.open(io.BytesIO(data)) as img:  # reads the header only; raises on unknown or broken formats
            w, h = img.size
            limit = Image.MAX_IMAGE_PIXELS or float("inf")
            fast = decode_image is not None and img.format == "JPEG" and img.mode == "RGB" and w * h <= limit
            if not fast:
                img.load()
                return self(img)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a decoder warning (bad data) means "let PIL decide"
                warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 deprecates its decoders
                pixels = decode_image(
                    torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED
                )
        except Exception:  # noqa: BLE001 - any failure: PIL decodes or raises its own, classifiable error
            pixels = None
        if pixels is None or pixels.dtype != torch.uint8 or tuple(pixels.shape) != (3, h, w):
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return self(img)
        if self.aspect == "pad" and w != h:
            side = max(w, h)
            square = torch.tensor(self.fill, dtype=torch.uint8).view(3, 1, 1).expand(3, side, side).clone()
            top, left = (side - h) // 2, (side - w) // 2  # the offsets PIL's paste uses in expand_to_square
            square[:, top : top + h, left : left + w] = pixels
            pixels = square
        return self.processor(images=pixels, return_tensors="pt")["pixel_values"][0]

    def output_size(self) -> tuple[int, int]:
        """(H, W) of the tensors this returns (for the empty [0, 3, H, W] of a text-only sample)."""
        if self._size is None:
            self._size = tuple(self(Image.new("RGB", (8, 8))).shape[-2:])
        return self._size
