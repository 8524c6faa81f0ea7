"""Reading what the user gives the chat: images and videos checked against limits, refused with a `ChatError`.

An image is checked for file size and then for its pixel count from the header alone (a 20,000 × 20,000 PNG of a
few kilobytes is refused before anything is decoded), then decoded completely (a truncated file fails here, not
later in the model). A video (a file, or a folder of frames) is sampled as `eval.py` samples it
(`dc.data.video.decode_video`); a missing, corrupt or frameless one is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dc.data.records import BadRecord
from dc.data.video import decode_video

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")
"""File name endings read as videos (everything else is tried as an image; a folder is a video of frames)."""

MB = 1 << 20


class ChatError(ValueError):
    """A problem with what the user gave (file, question, conversation length); the message says how to fix it."""


@dataclass(frozen=True)
class InputLimits:
    """What the chat refuses to read (`limits` in configs/chat.yaml).

    Attributes:
        max_image_mb: largest image file.
        max_image_pixels: largest image (width × height, read from the header before decoding).
        max_video_mb: largest video file.
        max_question_chars: longest question.
    """

    max_image_mb: float = 50
    max_image_pixels: int = 40_000_000
    max_video_mb: float = 2048
    max_question_chars: int = 8000


def check_pixels(name: str, size: tuple[int, int], limits: InputLimits) -> None:
    """Refuse an image (or a video frame) of more than `limits.max_image_pixels` pixels, naming it."""
    width, height = size
    if width * height > limits.max_image_pixels:
        raise ChatError(
            f"{name} is {width}×{height} = {width * height:,} pixels, over the limit of "
            f"{limits.max_image_pixels:,} (limits.max_image_pixels): resize it first"
        )


def _check_frame_headers(p: Path, limits: InputLimits) -> None:
    """The pixel limit for the frames of a folder, or for an image file given as a one-frame video, read from the
    headers before anything is decoded (files PIL cannot open are left to the video reader).
    """
    for frame in sorted(p.iterdir()) if p.is_dir() else [p]:
        if not frame.is_file():
            continue
        try:
            with Image.open(frame) as img:
                size = img.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
        check_pixels(frame.name if frame == p else f"{p.name}/{frame.name}", size, limits)


def read_image(path: str | Path, limits: InputLimits) -> Image.Image:
    """An RGB image from `path`, refused with a `ChatError` when missing, too big or not an image."""
    p = Path(path)
    if not p.is_file():
        raise ChatError(f"no image file at {p}")
    size = p.stat().st_size
    if size > limits.max_image_mb * MB:
        raise ChatError(
            f"{p.name} is {size / MB:.1f} MB, over the {limits.max_image_mb:g} MB limit (limits.max_image_mb)"
        )
    try:
        with Image.open(p) as img:
            check_pixels(p.name, img.size, limits)  # from the header: nothing decoded yet
            img.load()
            return img.convert("RGB")
    except ChatError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ChatError(f"cannot read {p.name} as an image: {err}") from None


def read_video(path: str | Path, num_frames: int, limits: InputLimits) -> list[Image.Image]:
    """`num_frames` frames sampled from a video file or frame folder (as `eval.py`), or a `ChatError`."""
    p = Path(path)
    if p.is_file() and p.stat().st_size > limits.max_video_mb * MB:
        raise ChatError(
            f"{p.name} is {p.stat().st_size / MB:.0f} MB, over the {limits.max_video_mb:g} MB limit (limits.max_video_mb)"
        )
    if p.is_dir() or (p.is_file() and p.suffix.lower() not in VIDEO_SUFFIXES):
        _check_frame_headers(p, limits)
    try:
        frames = decode_video(p, num_frames).frames
    except BadRecord as err:  # missing, corrupt or empty video
        raise ChatError(f"cannot use {p.name} as a video: {err.detail}") from None
    if not frames:
        raise ChatError(f"{p.name} has no frames")
    for frame in frames:  # a video file's frames: known once decoded
        check_pixels(f"a frame of {p.name}", frame.size, limits)
    return frames


def is_video_path(path: str | Path) -> bool:
    """Whether `path` is read as a video: a folder (of frames) or a file with a video ending."""
    p = Path(path)
    return p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES
