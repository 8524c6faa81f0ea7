"""Reading a video (file or folder of extracted frames) as T frames sampled the reference way.

Decoder: PyAV (`av` on PyPI). Its wheels bundle the FFmpeg libraries (libavcodec, libavformat, libswscale, ...
inside `av.libs/`), so decoding works offline on a machine with no FFmpeg installed. torchcodec does not: its wheel
ships only small shims built against FFmpeg majors 4-8 and loads the system's `libavcodec.so.N` at run time
(checked on torchcodec 0.9.1: no `libav*` in the wheel), and it is pinned to one torch release. decord, the
reference's decoder, has no wheels for current Pythons.

Frame sampling (`sample_frame_indices`, the reference's `get_seq_frames`): T = min(total, num_frames); [0, total-1]
is cut into T equal segments of length seg = (total-1)/T and frame i is the midpoint
`(round(seg*i) + round(seg*(i+1))) // 2`, with numpy's round-half-to-even.

What "total" is: the number of frames that actually decode, not what the container says. Headers lie (an AVI
whose header was cut short, an MKV/WebM with no count at all, an MP4 truncated after its index, packed-bitstream
DivX AVIs whose packets are not frames), and sampling from a wrong count either misses the end of the video or
asks for frames that do not exist. So `decode_video` decodes the whole stream once, counting frames and keeping
only those at the indices computed from a first guess of the count (the header's, else the number of demuxed
packets); when the decoded count differs from the guess it decodes again and keeps the frames at the indices for
the true count (the rare path: two decodes). A packet that fails to decode is skipped (not counted); a read error
ends the stream there. Cost: one full decode per video (the frames after the last sampled one are ~1/(2T) of the
video), so a caller answering several questions about one video should decode it once.

A folder is a video of its image files (.jpg/.jpeg/.png/.bmp/.webp), ordered by a natural sort (frame_2 before
frame_10); only the sampled images are opened.

Errors raise `BadVideo`, a `BadRecord` whose reason is one of the data layer's counted skip reasons:
`missing_video` (no such path), `corrupt_video` (the container cannot be opened or read, a sampled frame image
that PIL cannot decode), `empty_video` (no video stream, no decodable frame, a folder without frame images).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from dc.data.records import BadRecord

log = logging.getLogger(__name__)

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_REASONS = ("missing_video", "corrupt_video", "empty_video")


class BadVideo(BadRecord):
    """A video that cannot give frames; `reason` is one of `VIDEO_REASONS` (counted like any skipped record).

    Args:
        reason: `missing_video`, `corrupt_video` or `empty_video`.
        detail: What went wrong, naming the path.
        record_id: The record or question id, when the caller knows it.
    """

    def __init__(self, reason: str, detail: str, record_id: object = None) -> None:
        if reason not in VIDEO_REASONS:
            raise ValueError(f"unknown video skip reason {reason!r}; allowed: {VIDEO_REASONS}")
        super().__init__(reason, detail, record_id)


@dataclass(frozen=True)
class SampledVideo:
    """The frames read from one video.

    Attributes:
        frames: T RGB images in time order.
        indices: The T frame indices sampled (0-based, into the decodable frames).
        total: How many frames the video has (decoded count for a file, image count for a folder).
    """

    frames: list[Image.Image]
    indices: list[int]
    total: int


def sample_frame_indices(total: int, num_frames: int = 8) -> list[int]:
    """The reference's frame indices: midpoints of T = min(total, num_frames) equal segments of [0, total-1].

    Args:
        total: Number of frames in the video.
        num_frames: Frames wanted.

    Returns:
        T non-decreasing indices in `[0, total-1]`.

    Raises:
        ValueError: `total <= 0` or `num_frames <= 0`.
    """
    if total <= 0:
        raise ValueError(f"a video needs at least one frame to sample from, got total={total}")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    t = min(total, num_frames)
    seg = float(total - 1) / t
    # np.round: half to even, as the reference (0.5 -> 0, 1.5 -> 2, 2.5 -> 2).
    return [(int(np.round(seg * i)) + int(np.round(seg * (i + 1)))) // 2 for i in range(t)]


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders digit runs by value: `frame_2.jpg` < `frame_10.jpg`."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def frame_files(folder: Path) -> list[Path]:
    """The frame images of a folder of extracted frames, naturally sorted (hidden files ignored)."""
    names = [n for n in os.listdir(folder) if not n.startswith(".") and n.lower().endswith(FRAME_EXTENSIONS)]
    return [folder / n for n in sorted(names, key=natural_key)]


def _read_folder(folder: Path, num_frames: int) -> SampledVideo:
    files = frame_files(folder)
    if not files:
        raise BadVideo("empty_video", f"{folder}: no frame images ({', '.join(FRAME_EXTENSIONS)})")
    indices = sample_frame_indices(len(files), num_frames)
    frames = []
    for i in indices:
        try:
            with Image.open(files[i]) as img:
                frames.append(img.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise BadVideo("corrupt_video", f"{files[i]}: {type(exc).__name__}: {exc}") from None
    return SampledVideo(frames, indices, len(files))


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:  # also EOFError on an empty container: nothing readable either way
        raise BadVideo("corrupt_video", f"{path}: cannot open: {type(exc).__name__}: {exc}") from None


def _frames(container: av.container.InputContainer, path: Path) -> Iterator[av.VideoFrame]:
    """Every decodable frame of the first video stream, in presentation order."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame/slice threads: same frames, faster
    packets = container.demux(stream)
    bad = 0
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as exc:  # a read error (truncated file): the stream ends here
            log.warning("%s: read error, using the frames before it: %s", path, exc)
            break
        try:
            # The final packet (empty) flushes the decoder's delayed frames.
            yield from packet.decode()
        except av.error.FFmpegError:
            bad += 1  # an undecodable packet adds no frame; the decoder carries on with the next one
    if bad:
        log.warning("%s: %d packet(s) could not be decoded and were skipped", path, bad)


def _count_guess(container: av.container.InputContainer) -> int:
    """The header's frame count, else the number of non-empty video packets (demuxed, not decoded)."""
    stream = container.streams.video[0]
    if stream.frames > 0:
        return int(stream.frames)
    try:
        return sum(1 for p in container.demux(stream) if p.size)
    except av.error.FFmpegError:
        return 0


def _decode_pass(path: Path, wanted: Sequence[int]) -> tuple[dict[int, Image.Image], int]:
    """One full decode: (frames at the `wanted` indices that exist, number of decoded frames)."""
    keep = set(wanted)
    got: dict[int, Image.Image] = {}
    n = 0
    with _open(path) as container:
        for frame in _frames(container, path):
            if n in keep:
                got[n] = frame.to_image()  # RGB24; only the kept frames are converted
            n += 1
    return got, n


def _read_file(path: Path, num_frames: int) -> SampledVideo:
    with _open(path) as container:
        if not container.streams.video:
            raise BadVideo("empty_video", f"{path}: no video stream")
        guess = _count_guess(container)
    indices = sample_frame_indices(guess, num_frames) if guess > 0 else []
    got, total = _decode_pass(path, indices)
    if total == 0:
        raise BadVideo("empty_video", f"{path}: no decodable frame")
    if total != guess:
        log.debug("%s: container says %d frames, %d decode; sampling from %d", path, guess, total, total)
        indices = sample_frame_indices(total, num_frames)
        got, again = _decode_pass(path, indices)
        if again != total or len(got) != len(set(indices)):  # decoding is deterministic; guard anyway
            raise BadVideo("corrupt_video", f"{path}: decoded {total} then {again} frames")
    return SampledVideo([got[i] for i in indices], indices, total)


def decode_video(path: str | os.PathLike, num_frames: int = 8) -> SampledVideo:
    """Read T = min(total, num_frames) frames of a video file or a folder of frames (see module docstring).

    Args:
        path: A video file (anything FFmpeg reads: mp4, avi, mkv, webm, ...) or a folder of frame images.
        num_frames: Frames to sample.

    Returns:
        The frames with their indices and the video's frame count.

    Raises:
        BadVideo: `missing_video`, `corrupt_video` or `empty_video`.
        ValueError: `num_frames <= 0`.
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    p = Path(path)
    if p.is_dir():
        return _read_folder(p, num_frames)
    if not p.is_file():
        raise BadVideo("missing_video", f"{p}: no such video file or frame folder")
    return _read_file(p, num_frames)


def read_video(path: str | os.PathLike, num_frames: int = 8) -> list[Image.Image]:
    """The sampled frames of a video file or frame folder, in time order (`decode_video(...).frames`)."""
    return decode_video(path, num_frames).frames
