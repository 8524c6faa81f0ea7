"""Reading videos: the reference's frame indices, decoding real files written here with PyAV, lying headers, errors."""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from dc.data.records import SKIP_REASONS, BadRecord
from dc.data.video import BadVideo, decode_video, read_video, sample_frame_indices


# ---------------------------------------------------------------------------------------------------- indices
# Expected values worked by hand: seg = (total-1)/T, bounds b_i = round_half_even(seg*i), index_i = (b_i+b_{i+1})//2.
@pytest.mark.parametrize(
    "total, num_frames, expected",
    [
        # seg = 9/8 = 1.125; bounds 0, 1.125->1, 2.25->2, 3.375->3, 4.5->4 (tie, to even), 5.625->6, 6.75->7, 7.875->8, 9.
        # Round-half-up would give 4.5->5 and [0, 1, 2, 4, 5, 6, 7, 8].
        (10, 8, [0, 1, 2, 3, 5, 6, 7, 8]),
        # seg = 99/8 = 12.375; bounds 0, 12, 24.75->25, 37.125->37, 49.5->50 (tie, 50 is even), 61.875->62, 74.25->74,
        # 86.625->87, 99.
        (100, 8, [6, 18, 31, 43, 56, 68, 80, 93]),
        # seg = 5/4 = 1.25; bounds 0, 1, 2.5->2 (tie, to even; half-up: 3), 3.75->4, 5.
        (6, 4, [0, 1, 3, 4]),
        # T > total: T = min(4, 8) = 4, seg = 3/4; bounds 0, 0.75->1, 1.5->2 (tie, 2 is even), 2.25->2, 3.
        (4, 8, [0, 1, 2, 2]),
        # T = 2, seg = 1/2; bounds 0, 0.5->0 (tie, to even), 1.0->1: frame 0 twice, as the reference does.
        (2, 8, [0, 0]),
        # T = 5, seg = 4/5; bounds 0, 0.8->1, 1.6->2, 2.4->2, 3.2->3, 4: the last frame is never picked.
        (5, 8, [0, 1, 2, 2, 3]),
        (1, 8, [0]),
        # seg = 1: bounds 0, 1, 2.
        (3, 2, [0, 1]),
    ],
)
def test_sample_frame_indices(total, num_frames, expected):
    assert sample_frame_indices(total, num_frames) == expected


@pytest.mark.parametrize("total", [0, -3])
def test_sample_frame_indices_needs_frames(total):
    with pytest.raises(ValueError, match="at least one frame"):
        sample_frame_indices(total, 8)


# ---------------------------------------------------------------------------------------------------- files
def code(k: int) -> tuple[int, int, int]:
    """Frame k's colour: every channel tells k apart from its neighbours by >= 20 levels."""
    return (20 * k % 256, (255 - 20 * k) % 256, (40 * k + 30) % 256)


def frame_array(k: int, size: int = 32) -> np.ndarray:
    return np.broadcast_to(np.array(code(k), np.uint8), (size, size, 3)).copy()


def write(path: Path, n: int, codec: str = "libx264", pix_fmt: str = "yuv420p", **options: str) -> Path:
    with av.open(str(path), mode="w") as c:
        s = c.add_stream(codec, rate=10)
        s.width = s.height = 32
        s.pix_fmt = pix_fmt
        s.options = options
        for k in range(n):
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame_array(k), format="rgb24")))
        c.mux(s.encode(None))
    return path


def which_frame(img: Image.Image, n: int) -> int:
    """The k whose colour code is nearest to the image's mean colour (lossy codecs move pixels a little)."""
    mean = np.asarray(img, np.float64).reshape(-1, 3).mean(0)
    dist = [np.abs(mean - np.array(code(k))).max() for k in range(n)]
    k = int(np.argmin(dist))
    assert dist[k] < 8, (mean, code(k))
    return k


def test_decode_mp4_gives_the_sampled_frames(tmp_path):
    path = write(tmp_path / "clip.mp4", 10, crf="0")
    video = decode_video(path, 8)
    assert video.total == 10 and video.indices == [0, 1, 2, 3, 5, 6, 7, 8]
    assert [which_frame(f, 10) for f in video.frames] == [0, 1, 2, 3, 5, 6, 7, 8]
    assert all(f.mode == "RGB" and f.size == (32, 32) for f in video.frames)
    assert [which_frame(f, 10) for f in read_video(path, 8)] == video.indices


def test_short_video_gives_fewer_frames(tmp_path):
    path = write(tmp_path / "short.mp4", 5, crf="0")
    assert [which_frame(f, 5) for f in read_video(path, 8)] == [0, 1, 2, 2, 3]


def test_lossless_rgb_mp4_round_trips_exactly(tmp_path):
    path = write(tmp_path / "rgb.mp4", 6, codec="libx264rgb", pix_fmt="rgb24", crf="0")
    video = decode_video(path, 3)  # seg = 5/3: bounds 0, 1.67->2, 3.33->3, 5 -> [1, 2, 4]
    assert video.indices == [1, 2, 4]
    for k, img in zip(video.indices, video.frames, strict=True):
        np.testing.assert_array_equal(np.asarray(img), frame_array(k))


def patch_avi_frame_count(path: Path, count: int) -> None:
    """Overwrite the AVI main header's dwTotalFrames and the stream header's dwLength (what demuxers report)."""
    data = bytearray(path.read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    assert avih > 0 and strh > 0
    struct.pack_into("<I", data, avih + 8 + 16, count)  # fourcc, size, then 4 DWORDs before dwTotalFrames
    struct.pack_into("<I", data, strh + 8 + 32, count)  # fourcc, size, then 8 DWORD-sized fields before dwLength
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("reported", [4, 40])
def test_container_frame_count_is_not_trusted(tmp_path, reported):
    path = write(tmp_path / "lying.avi", 12, codec="ffv1", pix_fmt="bgr0")
    patch_avi_frame_count(path, reported)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == reported  # the header now lies
    video = decode_video(path, 8)
    # Sampled from the 12 frames that decode: seg = 11/8 = 1.375; bounds 0, 1.375->1, 2.75->3, 4.125->4, 5.5->6 (tie,
    # to even), 6.875->7, 8.25->8, 9.625->10, 11.
    assert video.total == 12 and video.indices == [0, 2, 3, 5, 6, 7, 9, 10]
    assert [which_frame(f, 12) for f in video.frames] == [0, 2, 3, 5, 6, 7, 9, 10]


def test_container_without_frame_count(tmp_path):
    path = write(tmp_path / "nocount.mkv", 7, codec="ffv1", pix_fmt="bgr0")
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # Matroska stores no frame count
    video = decode_video(path, 4)  # seg = 6/4 = 1.5; bounds 0, 1.5->2, 3, 4.5->4, 6 -> [1, 2, 3, 5]
    assert video.total == 7 and [which_frame(f, 7) for f in video.frames] == [1, 2, 3, 5]


# ---------------------------------------------------------------------------------------------------- folders
def test_frame_folder_uses_natural_order(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(12):  # frame_1 ... frame_12: a plain string sort would put frame_10 after frame_1
        Image.fromarray(frame_array(k)).save(folder / f"frame_{k + 1}.png")
    (folder / "notes.txt").write_text("not a frame")
    video = decode_video(folder, 4)
    # seg = 11/4 = 2.75; bounds 0, 2.75->3, 5.5->6 (tie, to even), 8.25->8, 11 -> [1, 4, 7, 9].
    assert video.total == 12 and video.indices == [1, 4, 7, 9]
    for k, img in zip(video.indices, video.frames, strict=True):
        np.testing.assert_array_equal(np.asarray(img), frame_array(k))


# ---------------------------------------------------------------------------------------------------- errors
def reason(path: Path) -> str:
    with pytest.raises(BadVideo) as err:
        read_video(path, 8)
    assert str(path) in err.value.detail
    return err.value.reason


def test_bad_videos_raise_counted_reasons(tmp_path):
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    assert reason(tmp_path / "garbage.mp4") == "corrupt_video"

    with av.open(str(tmp_path / "zero.mp4"), mode="w") as c:  # a valid container without a single frame
        s = c.add_stream("libx264", rate=10)
        s.width = s.height = 32
        c.start_encoding()
    assert (tmp_path / "zero.mp4").stat().st_size > 0
    assert reason(tmp_path / "zero.mp4") == "empty_video"

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no frames here")
    assert reason(tmp_path / "empty") == "empty_video"

    assert reason(tmp_path / "nowhere.mp4") == "missing_video"

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "0.jpg").write_bytes(b"not a jpeg")
    assert reason(broken) == "corrupt_video"


def test_bad_video_is_a_counted_bad_record():
    err = BadVideo("corrupt_video", "x.mp4: cannot open", record_id="q1")
    assert isinstance(err, BadRecord) and err.record_id == "q1"
    assert {"missing_video", "corrupt_video", "empty_video"} <= set(SKIP_REASONS)
    with pytest.raises(ValueError, match="allowed"):
        BadVideo("corrupt_image", "x")
