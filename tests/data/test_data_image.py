"""`ImagePreprocessor.from_bytes` (the loaders' fast path) gives exactly what the PIL path gives."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

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
@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGB", "JPEG"), ("RGB", "PNG"), ("L", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("RGB", "WEBP"), ("CMYK", "JPEG")],
)
def test_from_bytes_equals_pil_path(mode, fmt, aspect):
    proc = ImagePreprocessor(
        CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}), aspect
    )
    data = encoded(mode, fmt)
    with Image.open(io.BytesIO(data)) as img:
        expected = proc(img)
    assert torch.equal(proc.from_bytes(data), expected)


@pytest.mark.parametrize("aspect", ["pad", "square"])
def test_rgb_jpeg_takes_the_tensor_path(aspect, monkeypatch):
    if image_module.decode_image is None:
        pytest.skip("this torchvision has no image decoder")
    proc = ImagePreprocessor(
        CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}), aspect
    )
    data = encoded("RGB", "JPEG")
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


def _damaged_png() -> bytes:
    """An RGB PNG whose compressed pixel data is damaged, its chunk CRC made to match: only the zlib check fails."""
    data = bytearray(encoded("RGB", "PNG", size=(50, 40)))
    pos = 8
    while data[pos + 4 : pos + 8] != b"IDAT":
        pos += 12 + struct.unpack(">I", data[pos : pos + 4])[0]
    (length,) = struct.unpack(">I", data[pos : pos + 4])
    body = pos + 8
    data[body + length - 2] ^= 0xFF
    data[body + length : body + length + 4] = struct.pack(">I", zlib.crc32(bytes(data[pos + 4 : body + length])))
    return bytes(data)


def test_a_png_with_damaged_data_is_an_error_not_a_crash(tmp_path):
    """torchvision's libpng decoder ends the process (SIGSEGV) on such a file: run it in a child process."""
    (tmp_path / "bad.png").write_bytes(_damaged_png())
    code = (
        "import sys\n"
        "from transformers import CLIPImageProcessor\n"
        "from dc.data.image import ImagePreprocessor\n"
        "proc = ImagePreprocessor(CLIPImageProcessor(size={'shortest_edge': 24}, crop_size={'height': 24, 'width': 24}))\n"
        "try:\n"
        "    proc.from_bytes(open(sys.argv[1], 'rb').read())\n"
        "except OSError as err:\n"
        "    print('OSError', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "bad.png")], capture_output=True, text=True)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.startswith("OSError")
