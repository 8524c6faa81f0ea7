"""Temporal aggregation of a video's per-frame visual tokens, applied after the projector (as in the reference code).

Each of the T frames goes through the encoder and the connector as one image, giving `[T, N, D]` (N tokens per
frame in raster order, D the LLM width). The video then becomes one token sequence by one of:

* `pool` (the Dense Connector's `--use_pool`, FreeVA's "D2"): 1-D max pool with kernel 2, stride 2 over each
  frame's tokens in raster order, then the frames concatenated in time order: `[T * (N // 2), D]` with
  `out[t * (N // 2) + j] = max(x[t, 2j], x[t, 2j + 1])`. On CLIP's 24x24 grid a pair is two horizontally adjacent
  patches (8 x 576 -> 2,304 tokens); on SigLIP's 27x27 grid pairs straddle rows and each frame's last token is
  dropped (8 x 729 -> 2,912).
* `concat` (FreeVA's default "D1", the reference without `--use_pool`): frames concatenated, `[T * N, D]`.
* `mean` (FreeVA's "S1", commented out there): the average over frames, `[N, D]`.

All three keep any leading batch dimensions: `[..., T, N, D] -> [..., N', D]` (videos of one batch must share T).
"""

from __future__ import annotations

import torch

TEMPORAL_MODES = ("pool", "concat", "mean")


def _check_mode(mode: str) -> None:
    if mode not in TEMPORAL_MODES:
        raise ValueError(f"temporal aggregation mode {mode!r} is not one of {TEMPORAL_MODES}")


def temporal_tokens(num_frames: int, tokens_per_frame: int, mode: str = "pool") -> int:
    """Number of visual tokens a video of `num_frames` frames becomes (known before any weight is built).

    Args:
        num_frames: T, the frames actually sampled (`min(total, num_frames)` for a short video).
        tokens_per_frame: N, the connector's token count for one frame.
        mode: One of `TEMPORAL_MODES`.

    Raises:
        ValueError: Unknown mode, a non-positive count, or `pool` with fewer than 2 tokens per frame.
    """
    _check_mode(mode)
    if num_frames <= 0 or tokens_per_frame <= 0:
        raise ValueError(f"need num_frames > 0 and tokens_per_frame > 0, got {num_frames} and {tokens_per_frame}")
    if mode == "pool":
        if tokens_per_frame < 2:
            raise ValueError(f"temporal mode 'pool' pairs tokens; a frame has only {tokens_per_frame}")
        return num_frames * (tokens_per_frame // 2)
    if mode == "concat":
        return num_frames * tokens_per_frame
    return tokens_per_frame


def temporal_aggregate(frames: torch.Tensor, mode: str = "pool") -> torch.Tensor:
    """Merge per-frame tokens `[..., T, N, D]` into one sequence `[..., N', D]` (see module docstring).

    Args:
        frames: Projected visual tokens of one video (`[T, N, D]`) or a batch of videos (`[B, T, N, D]`).
        mode: One of `TEMPORAL_MODES`.

    Returns:
        `[..., temporal_tokens(T, N, mode), D]`, same dtype and device.

    Raises:
        ValueError: Unknown mode, fewer than 3 dimensions, or `pool` with N < 2.
    """
    _check_mode(mode)
    if frames.dim() < 3:
        raise ValueError(f"expected frames shaped [..., T, N, D], got {tuple(frames.shape)}")
    *lead, t, n, d = frames.shape
    temporal_tokens(t, n, mode)  # validates the counts
    if mode == "mean":
        return frames.mean(dim=-3)
    if mode == "concat":
        return frames.reshape(*lead, t * n, d)
    # Pairs of consecutive tokens, an odd last token dropped: the same values as max_pool1d(kernel 2, stride 2) on
    # the token axis, in any dtype. reshape, not view: the input may be non-contiguous.
    half = n // 2
    pairs = frames[..., : 2 * half, :].reshape(*lead, t, half, 2, d)
    return pairs.amax(dim=-2).reshape(*lead, t * half, d)
