"""AnyRes against hand-computed expectations: best grid, crop boxes, unpadding (odd remainders included), token
counts in both encoder layouts, the merged token order, gradients, and batching images of different counts."""

from __future__ import annotations

import pytest
import torch

from dc.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dc.models.builder import build_connector, build_vlm
from dc.models.visual import ViewTokens, VisualMeta
from dc.models.visual.anyres import AnyRes, AnyResMerge, crop_boxes, fitted_size, select_best_resolution, unpad_bounds

from dc_testing import compose_config

CLIP, SIGLIP = 336, 384  # encoder input sides; views give 24 x 24 and 27 x 27 patch grids


def test_best_resolution_hand_computed() -> None:
    s = SIGLIP
    cands = AnyRes().candidates(s)
    assert cands == [(384, 768), (768, 384), (768, 768), (384, 1152), (1152, 384)]  # [w, h] multiples 1x2, 2x1, ...
    # 1000 x 600: effective (384,768) 384*230, (768,384) 640*384=245760, (768,768) 768*460=353280 (best),
    # (384,1152) 384*230, (1152,384) 640*384
    assert select_best_resolution((1000, 600), cands) == (768, 768)
    # 300 x 900 (portrait): (384,1152) scales by 1.28 -> 384*1152 > 300*900, effective capped at 270000: best
    assert select_best_resolution((300, 900), cands) == (384, 1152)
    # 384 x 384: (384,768), (768,384), (768,768), ... all reach the full 147456; least waste is 384*768 - 147456,
    # shared by (384,768) and (768,384): the first listed wins
    assert select_best_resolution((384, 384), cands) == (384, 768)
    assert AnyRes().layout((1000, 600), s) == ((768, 768), (2, 2))
    assert AnyRes().layout((300, 900), s) == ((384, 1152), (3, 1))


def test_fitted_size_and_crop_boxes() -> None:
    # 1000 x 600 into 768 x 768: width-limited, scale 0.768, height ceil(460.8) = 461
    assert fitted_size((1000, 600), (768, 768)) == (768, 461)
    # 300 x 900 into 384 x 1152: scale_w = 1.28 = scale_h -> the else branch: width ceil(300*1.28) = 384
    assert fitted_size((300, 900), (384, 1152)) == (384, 1152)
    assert crop_boxes((768, 1152), 384) == [
        (0, 0, 384, 384), (384, 0, 768, 384),
        (0, 384, 384, 768), (384, 384, 768, 768),
        (0, 768, 384, 1152), (384, 768, 768, 1152),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "cols", "size", "bounds"),
    [
        (54, 54, (1000, 600), (11, 43, 0, 54)),  # kept int(600*54/1000)=32, pad (54-32)//2=11 -> 32 rows
        (54, 54, (1000, 650), (9, 45, 0, 54)),  # kept int(35.1)=35, pad 19//2=9 -> 36 rows (odd remainder: +1)
        (54, 54, (600, 1000), (0, 54, 11, 43)),  # taller than wide: columns go
        (48, 48, (1000, 600), (10, 38, 0, 48)),  # CLIP 2x2: kept int(28.8)=28, pad 10
        (27, 54, (1000, 500), (0, 27, 0, 54)),  # same aspect as the map: nothing removed
    ],
)
def test_unpad_bounds(rows, cols, size, bounds) -> None:
    assert unpad_bounds(rows, cols, size) == bounds


@pytest.mark.parametrize(
    ("side", "view", "size", "tokens"),
    [
        (SIGLIP, ViewTokens(27, 27), (1000, 600), 729 + 32 * 55),  # the example: 2489
        (CLIP, ViewTokens(24, 24), (1000, 600), 576 + 28 * 49),  # 672x672 -> 48x48 map, 28 rows kept
        (CLIP, ViewTokens(12, 12), (1000, 600), 144 + 14 * 25),  # Efficient DC: 24x24 map, kept int(14.4)=14, pad 5
        (CLIP, ViewTokens(24, 24, 144), (1000, 600), 720 + 28 * 49 + 4 * 144),  # STI: crops' pooled tokens appended
        (SIGLIP, ViewTokens(27, 27), (300, 900), 729 + 81 * 28),  # 3x1 grid: 81 x 27 map, width kept int(27)=27
        (CLIP, ViewTokens(24, 24), (336, 672), 576 + 48 * 25),  # exact 1x2 fit: nothing removed
    ],
)
def test_token_count_arithmetic(side, view, size, tokens) -> None:
    meta = AnyRes().meta(size, view, side)
    assert meta.tokens == tokens
    assert meta.views == 1 + meta.grid[0] * meta.grid[1]


def test_flat_and_spatial_counts() -> None:
    view = ViewTokens(27, 27)
    assert AnyRes(merge="flat").meta((1000, 600), view, SIGLIP).tokens == 5 * 729
    assert AnyRes(merge="spatial").meta((1000, 600), view, SIGLIP).tokens == 729 + 54 * 54


def _position_views(meta: VisualMeta, view: ViewTokens) -> torch.Tensor:
    """[V, T, 3] features: (view index, row, col) of every grid token; extra tokens get (view, -1, k)."""
    out = []
    for v in range(meta.views):
        grid = [[v, r, c] for r in range(view.rows) for c in range(view.cols)]
        extra = [[v, -1, k] for k in range(view.extra)]
        out.append(torch.tensor(grid + extra, dtype=torch.float32))
    return torch.stack(out)


@pytest.mark.parametrize("extra", [0, 2])
def test_merged_token_order(extra: int) -> None:
    view = ViewTokens(3, 4, extra)
    mode = AnyRes(grids=[[2, 2]])  # one candidate: a 2 x 2 crop grid
    meta = mode.meta((100, 60), view, 48)  # wide: rows get unpadded on a 6 x 8 map
    merge = AnyResMerge("spatial_unpad", 3)
    with torch.no_grad():
        merge.image_newline.fill_(-7.0)
    out = merge(_position_views(meta, view), meta, view)
    top, bottom, left, right = unpad_bounds(6, 8, (100, 60))
    expected = [[0, r, c] for r in range(3) for c in range(4)] + [[0, -1, k] for k in range(extra)]  # base view
    for big_r in range(top, bottom):
        for big_c in range(left, right):
            crop = (big_r // 3) * 2 + big_c // 4  # raster order of the crops, 1 + crop = view index
            expected.append([1 + crop, big_r % 3, big_c % 4])
        expected.append([-7.0, -7.0, -7.0])  # the newline closes every row
    for crop in range(4):
        expected += [[1 + crop, -1, k] for k in range(extra)]
    assert out.tolist() == expected
    assert out.shape[0] == meta.tokens


def _anyres_cfg(encoder: str, connector: str = "dci", *extra: str):
    return compose_config(
        "train",
        [
            f"encoder={encoder}",
            f"connector={connector}",
            "llm=tiny",
            "image=anyres",
            "run_name=t",
            "paths.output_dir=/tmp/unused",
            *extra,
        ],
    )


def _sample(vlm, meta: VisualMeta, text: int = 5, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    size = vlm.encoder.layout.image_size
    ids = torch.cat(
        [
            torch.tensor([1]),
            torch.full((meta.tokens,), IMAGE_TOKEN_INDEX),
            torch.randint(3, 200, (text,), generator=gen),
        ]
    )
    labels = torch.where(ids == IMAGE_TOKEN_INDEX, IGNORE_INDEX, ids)
    labels[0] = IGNORE_INDEX
    return {
        "input_ids": ids,
        "labels": labels,
        "pixel_values": torch.randn(meta.views, 3, size, size, generator=gen),
        "visual": [meta],
    }


def test_config_composes_and_counts_on_meta() -> None:
    cfg = _anyres_cfg("tiny_siglip")
    connector = build_connector(cfg, device="meta")
    assert connector.view_tokens() == ViewTokens(7, 7, 0)
    assert connector.image_merge.image_newline.is_meta  # counted without allocating anything
    assert cfg.data.max_length == 4096


def test_gradients_reach_newline_and_projector_from_every_view() -> None:
    torch.manual_seed(0)
    vlm = build_vlm(_anyres_cfg("tiny_siglip"))
    vlm.encoder.requires_grad_(False)
    mode = vlm.connector.image_mode
    meta = mode.meta((100, 60), vlm.connector.view_tokens(), vlm.encoder.layout.image_size)  # 56 px views
    s = _sample(vlm, meta)
    outputs = []

    def keep(module, inputs, output) -> None:
        output.retain_grad()
        outputs.append(output)

    handle = vlm.connector.projector.register_forward_hook(keep)
    loss = vlm(
        input_ids=s["input_ids"][None],
        attention_mask=torch.ones(1, len(s["input_ids"]), dtype=torch.long),
        pixel_values=s["pixel_values"],
        labels=s["labels"][None],
        visual=s["visual"],
    ).loss
    loss.backward()
    handle.remove()
    assert vlm.connector.image_merge.image_newline.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vlm.connector.projector.parameters())
    per_view = outputs[0].grad.abs().sum(dim=(1, 2))
    assert per_view.shape[0] == meta.views and bool((per_view > 0).all())  # every view feeds the loss


def test_mixed_batch_equals_each_sample_alone() -> None:
    torch.manual_seed(0)
    vlm = build_vlm(_anyres_cfg("tiny_clip")).eval()
    view, side = vlm.connector.view_tokens(), vlm.encoder.layout.image_size
    metas = [vlm.connector.image_mode.meta(size, view, side) for size in ((100, 60), (40, 130))]
    assert metas[0].tokens != metas[1].tokens and metas[0].views != metas[1].views
    samples = [_sample(vlm, m, text=4 + 3 * k, seed=k) for k, m in enumerate(metas)]

    def per_sample_loss(batch_samples: list[dict]) -> list[float]:
        longest = max(len(s["input_ids"]) for s in batch_samples)
        ids = torch.full((len(batch_samples), longest), 0)
        labels = torch.full_like(ids, IGNORE_INDEX)
        mask = torch.zeros_like(ids)
        for row, s in enumerate(batch_samples):
            n = len(s["input_ids"])
            ids[row, :n], labels[row, :n], mask[row, :n] = s["input_ids"], s["labels"], 1
        pixels = torch.cat([s["pixel_values"] for s in batch_samples])
        visual = [m for s in batch_samples for m in s["visual"]]
        with torch.no_grad():
            logits = vlm(input_ids=ids, attention_mask=mask, pixel_values=pixels, visual=visual).logits
        out = []
        for row in range(len(batch_samples)):
            target = labels[row, 1:]
            keep = target != IGNORE_INDEX
            out.append(float(torch.nn.functional.cross_entropy(logits[row, :-1][keep], target[keep])))
        return out

    together = per_sample_loss(samples)
    alone = [per_sample_loss([s])[0] for s in samples]
    assert together == pytest.approx(alone, abs=1e-5)
