"""`ImagePreprocessor.from_bytes` (the loaders' fast path) gives exactly what the PIL path gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from dc.data import image as image_module
from dc.data.image import ImagePreprocessor


def encoded(mode: str, fmt: str, size=(53, 37), seed=0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    img = Image.fromarray(arr, "RGBA").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("aspect", ["pad", "square"])
@pytest.mark.parametrize(("mode", "fmt"), [("RGB", "JPEG"), ("RGB", "PNG"), ("L", "JPEG"), ("RGBA", "PNG"),
                                           ("P", "PNG"), ("RGB", "WEBP"), ("CMYK", "JPEG")])
def test_from_bytes_equals_pil_path(mode, fmt, aspect):
    proc = ImagePreprocessor(CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}), aspect)
    data = encoded(mode, fmt)
    with Image.open(io.BytesIO(data)) as img:
        expected = proc(img)
    assert torch.equal(proc.from_bytes(data), expected)


@pytest.mark.parametrize("aspect", ["pad", "square"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_rgb_jpeg_and_png_take_the_tensor_path(fmt, aspect, monkeypatch):
    if image_module.decode_image is None:
        pytest.skip("this torchvision has no image decoder")
    proc = ImagePreprocessor(CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}), aspect)
    data = encoded("RGB", fmt)
    with Image.open(io.BytesIO(data)) as img:
        expected = proc(img)

    def no_pil(self, image):
        raise AssertionError("took the PIL path")

    monkeypatch.setattr(ImagePreprocessor, "__call__", no_pil)
    assert torch.equal(proc.from_bytes(data), expected)


def test_from_bytes_raises_on_corrupt_and_truncated():
    proc = ImagePreprocessor(CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}))
    with pytest.raises(OSError):
        proc.from_bytes(b"not an image")
    data = encoded("RGB", "JPEG", size=(120, 90))
    with pytest.raises(OSError):
        proc.from_bytes(data[: len(data) // 2])
