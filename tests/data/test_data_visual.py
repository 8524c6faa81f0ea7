"""The data half of the visual-input contract: AnyRes views, per-image token counts in samples, interleaved
multi-image records and the collate's per-input metas."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from dc.constants import IMAGE_TOKEN_INDEX
from dc.data.collate import Collator
from dc.data.records import SampleBuilder
from dc.data.visual import VisualProcessor
from dc.models.visual import ViewTokens
from dc.models.visual.anyres import AnyRes

from data_helpers import qa

S = 32  # encoder input side of these tests


def _proc() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": S}, crop_size={"height": S, "width": S})


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


def test_anyres_views_of_an_exact_fit_are_its_halves() -> None:
    """A 64 x 32 image fits the 2x1 candidate exactly: no resize, no padding; the crops are its two halves."""
    visual = VisualProcessor(AnyRes(), _proc(), ViewTokens(4, 4), S)
    image = _gradient(2 * S, S)
    views, meta = visual(image)
    assert (meta.grid, meta.views, views.shape) == ((1, 2), 3, (3, 3, S, S))
    proc = _proc()
    expected = [image.resize((S, S), Image.Resampling.BICUBIC), image.crop((0, 0, S, S)), image.crop((S, 0, 2 * S, S))]
    for k, want in enumerate(expected):
        assert torch.equal(views[k], proc(images=want, return_tensors="pt")["pixel_values"][0]), k


def test_anyres_padding_is_black_and_centred() -> None:
    """A 64 x 20 image goes to the 64 x 32 candidate: resized to 64 x 20 (scale 1), 6 black rows above and below."""
    visual = VisualProcessor(AnyRes(grids=[[2, 1]]), _proc(), ViewTokens(4, 4), S)
    image = Image.new("RGB", (64, 20), (200, 10, 10))
    views, meta = visual(image)
    canvas = Image.new("RGB", (64, 32), (0, 0, 0))
    canvas.paste(image, (0, 6))
    proc = _proc()
    assert torch.equal(views[1], proc(images=canvas.crop((0, 0, 32, 32)), return_tensors="pt")["pixel_values"][0])
    assert meta.size == (64, 20)


def test_sample_slots_follow_each_images_own_count(tokenizer, template) -> None:
    """Two images of different sizes in one record: interleaved slots, each run as long as its image's count."""
    visual = VisualProcessor(AnyRes(), _proc(), ViewTokens(4, 4), S)
    builder = SampleBuilder(tokenizer, template, visual, max_length=512)
    images = [_png(_gradient(64, 32)), _png(_gradient(30, 90))]
    record = {
        "id": "two",
        "image": ["a.png", "b.png"],
        "conversations": [
            {"from": "human", "value": "Left <image> and right <image>, same?"},
            {"from": "gpt", "value": "no"},
        ],
    }
    sample = builder(record, lambda rid, paths: [lambda d=d: d for d in images])
    metas = sample["visual"]
    # 64x32 -> 2x1 grid exact: 16 + 4 rows x (8 + 1) = 52; 30x90 -> 1x3 grid (32x96): map 12x4, kept width
    # int(30 * 12 / 90) = 4 -> 16 + 12 x 5 = 76
    assert [m.tokens for m in metas] == [16 + 4 * 9, 16 + 12 * 5]
    assert sample["pixel_values"].shape[0] == sum(m.views for m in metas) == 3 + 4
    ids = sample["input_ids"].tolist()
    runs, k = [], 0
    while k < len(ids):
        if ids[k] == IMAGE_TOKEN_INDEX:
            start = k
            while k < len(ids) and ids[k] == IMAGE_TOKEN_INDEX:
                k += 1
            runs.append(k - start)
        k += 1
    assert runs == [52, 76]
    text = tokenizer.decode([i for i in ids[: ids.index(IMAGE_TOKEN_INDEX)]])
    assert text.endswith("USER: Left ")  # the first image stays where the text put it


def test_truncation_drops_whole_images_and_their_views(tokenizer, template) -> None:
    visual = VisualProcessor(AnyRes(), _proc(), ViewTokens(4, 4), S)
    images = [_png(_gradient(64, 32)), _png(_gradient(64, 32))]
    record = {
        "id": "cut",
        "image": ["a.png", "b.png"],
        "conversations": [
            {"from": "human", "value": "<image> one"},
            {"from": "gpt", "value": "first"},
            {"from": "human", "value": "<image> two"},
            {"from": "gpt", "value": "second"},
        ],
    }
    full = SampleBuilder(tokenizer, template, visual, max_length=1024)(
        record, lambda r, p: [lambda d=d: d for d in images]
    )
    ids = full["input_ids"].tolist()
    first_end = ids.index(IMAGE_TOKEN_INDEX) + 52
    second = ids.index(IMAGE_TOKEN_INDEX, first_end)  # start of the second image's run: cut right before it
    cut = SampleBuilder(tokenizer, template, visual, max_length=second)(
        record, lambda r, p: [lambda d=d: d for d in images]
    )
    assert cut["truncated"] and len(cut["visual"]) == 1 and cut["pixel_values"].shape[0] == 3
    assert int((cut["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == 52


def test_collate_concatenates_views_and_metas(tokenizer, template, visual) -> None:
    builder = SampleBuilder(tokenizer, template, visual, max_length=128)
    img = _png(_gradient(40, 30))
    a = builder({"id": "a", "image": "x.png", "conversations": qa("Q?", "A", True)}, lambda r, p: [lambda: img])
    b = builder({"id": "b", "conversations": qa("Text only?", "yes", False)}, lambda r, p: [])
    batch = Collator(tokenizer.pad_token_id)([a, b])
    assert batch["pixel_values"].shape[0] == 1 and batch["visual"] == a["visual"]
    assert int((batch["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == sum(m.tokens for m in batch["visual"])
