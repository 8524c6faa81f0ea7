"""Temporal aggregation after the projector: token counts, shapes and token order for CLIP and SigLIP grids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dc.models.visual.temporal import TEMPORAL_MODES, temporal_aggregate, temporal_tokens

T, D = 8, 3
GRIDS = {"clip": 24 * 24, "siglip": 27 * 27}


def features(t: int, n: int, d: int = D) -> torch.Tensor:
    """x[f, p, c] encodes (frame, position, channel); in every pair (2j, 2j+1) the larger value alternates between
    the first and the second token (p % 4), so a max that always took one side would be caught."""
    f = torch.arange(t).view(t, 1, 1).double()
    p = torch.arange(n).view(1, n, 1).double()
    c = torch.arange(d).view(1, 1, d).double()
    swap = ((torch.arange(n) % 4) < 2).view(1, n, 1).double()  # tokens 0,1 / 4,5 / ...: reversed order in the pair
    pos = torch.where(swap.bool(), p + 1 - 2 * (p % 2), p)  # swaps 0<->1, 4<->5, ...
    return 10000 * f + 10 * pos + c


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_pool_values_and_order(grid):
    n = GRIDS[grid]
    x = features(T, n)
    out = temporal_aggregate(x, "pool")
    half = n // 2
    assert out.shape == (T * half, D) == (temporal_tokens(T, n, "pool"), D)
    # Written out: token t*half + j is the max of frame t's tokens 2j and 2j+1 (raster order), frames in time order.
    for t in range(T):
        for j in (0, 1, 2, 3, half - 1):
            assert torch.equal(out[t * half + j], torch.maximum(x[t, 2 * j], x[t, 2 * j + 1])), (t, j)
    # The same as the reference's op: max_pool1d over the token axis of each frame.
    ref = F.max_pool1d(x.transpose(1, 2), kernel_size=2, stride=2).transpose(1, 2).reshape(T * half, D)
    assert torch.equal(out, ref)


def test_pool_token_counts_of_the_paper():
    assert temporal_tokens(8, 576, "pool") == 2304  # CLIP: 288 per frame
    assert temporal_tokens(8, 729, "pool") == 2912  # SigLIP: 364 per frame


def test_siglip_drops_each_frames_last_token():
    n = GRIDS["siglip"]
    x = features(T, n)
    out = temporal_aggregate(x, "pool")
    last_tokens = {float(x[t, n - 1, 0]) for t in range(T)}
    assert not last_tokens & {float(v) for v in out[:, 0]}
    # Pairs straddle rows on the 27-wide grid: pair 13 is (row 0, col 26) with (row 1, col 0).
    assert torch.equal(out[13], torch.maximum(x[0, 26], x[0, 27]))


def test_concat_and_mean():
    n = GRIDS["clip"]
    x = features(T, n)
    cat = temporal_aggregate(x, "concat")
    assert cat.shape == (T * n, D) == (temporal_tokens(T, n, "concat"), D)
    assert torch.equal(cat[3 * n + 17], x[3, 17]) and torch.equal(cat[-1], x[T - 1, n - 1])
    avg = temporal_aggregate(x, "mean")
    assert avg.shape == (n, D) == (temporal_tokens(T, n, "mean"), D)
    # mean over frames of 10000 f + g(p, c) = 10000 * (T - 1) / 2 + g(p, c).
    assert torch.allclose(avg, x[0] + 10000 * (T - 1) / 2)


@pytest.mark.parametrize("mode", TEMPORAL_MODES)
def test_batched_equals_per_video(mode):
    videos = torch.randn(3, 4, 10, 5)
    out = temporal_aggregate(videos, mode)
    assert torch.equal(out, torch.stack([temporal_aggregate(v, mode) for v in videos]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_and_non_contiguous_input(dtype):
    x = features(4, 6).to(dtype).transpose(0, 1).contiguous().transpose(0, 1)  # same values, non-contiguous
    assert not x.is_contiguous()
    out = temporal_aggregate(x, "pool")
    assert out.dtype == dtype and torch.equal(out, temporal_aggregate(x.contiguous(), "pool"))


def test_errors_name_the_allowed_values():
    with pytest.raises(ValueError, match="'pool', 'concat', 'mean'"):
        temporal_tokens(8, 576, "avg")
    with pytest.raises(ValueError, match="'pool', 'concat', 'mean'"):
        temporal_aggregate(torch.zeros(2, 4, 3), "max")
    with pytest.raises(ValueError, match="only 1"):
        temporal_aggregate(torch.zeros(2, 1, 3), "pool")
    with pytest.raises(ValueError, match=r"\[..., T, N, D\]"):
        temporal_aggregate(torch.zeros(4, 3), "concat")
