"""The synthetic video task: deterministic files whose answers agree with the decoded pixels."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from dc.data.synthetic import COLOURS, GRID, IMAGE_SIZE, POSITIONS
from dc.data.synthetic_video import blank_clip, generate
from dc.data.video import decode_video

BACKGROUND = (245, 245, 245)
CELL = IMAGE_SIZE // GRID


def centre_colours(frame: np.ndarray) -> dict[int, str | None]:
    """Colour name at each cell's centre pixel (None = background); every shape covers its cell's centre."""
    out = {}
    for cell in range(GRID * GRID):
        y, x = (cell // GRID) * CELL + CELL // 2, (cell % GRID) * CELL + CELL // 2
        px = tuple(int(v) for v in frame[y, x])
        out[cell] = next((name for name, rgb in COLOURS.items() if rgb == px), None)
        assert out[cell] is not None or px == BACKGROUND, px
    return out


def all_frames(path: Path) -> list[np.ndarray]:
    """Every frame, decoded with PyAV directly (the reference's sampling never returns all of them)."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synv") / "video_task", seed=3, n_per_kind=8)


def questions(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "questions.jsonl").read_text().splitlines()]


def test_answers_agree_with_the_decoded_pixels(task):
    rows = questions(task)
    by_video: dict[str, dict[str, str]] = {}
    for r in rows:
        by_video.setdefault(r["video"], {})[r["category"]] = r["answer"]
    for video, qa in by_video.items():
        frames = all_frames(task / "videos" / video)
        assert 8 <= len(frames) <= 16
        cells = [{c: col for c, col in centre_colours(f).items() if col} for f in frames]
        first, last = cells[0], cells[-1]
        if "count" in qa:
            assert all(c == first for c in cells) and ["one", "two", "three", "four"][len(first) - 1] == qa["count"]
            continue
        assert all(len(c) == 1 for c in cells)  # one shape per frame
        assert qa.get("moved", "no") == ("yes" if first.keys() != last.keys() else "no")
        assert qa.get("changed", "no") == ("yes" if list(first.values()) != list(last.values()) else "no")
        if "position" in qa:
            assert POSITIONS[next(iter(first))] == qa["position"]
        if "colour" in qa:
            assert all(list(c.values()) == [qa["colour"]] for c in cells)
        if "moved_from" in qa:
            assert (POSITIONS[next(iter(first))], POSITIONS[next(iter(last))]) == (qa["moved_from"], qa["moved_to"])
            assert sum(a.keys() != b.keys() for a, b in zip(cells, cells[1:], strict=False)) == 1  # one jump
        if "colour_before" in qa:
            assert (next(iter(first.values())), next(iter(last.values()))) == (qa["colour_before"], qa["colour_after"])


@pytest.mark.parametrize("num_frames", [8, 4])
def test_sampled_frames_see_both_states(task, num_frames):
    for name in sorted(p.name for p in (task / "videos").glob("*.mp4")):
        if not name.startswith(("move", "recolour")):
            continue
        frames = decode_video(task / "videos" / name, num_frames).frames
        states = {tuple(sorted(centre_colours(np.asarray(f)).items(), key=lambda kv: kv[0])) for f in frames}
        assert len(states) == 2, name


def test_question_mix_and_balance(task):
    rows = questions(task)
    cats = Counter(r["category"] for r in rows)
    # 8 clips per kind: static asks colour/shape/position/moved/changed, move asks colour/shape/moved/from/to,
    # recolour asks shape/changed/before/after, count asks count.
    assert cats == {
        "colour": 16,
        "shape": 24,
        "position": 8,
        "count": 8,
        "moved": 16,
        "changed": 16,
        "moved_from": 8,
        "moved_to": 8,
        "colour_before": 8,
        "colour_after": 8,
    }
    for cat in ("moved", "changed"):
        assert Counter(r["answer"] for r in rows if r["category"] == cat) == {"yes": 8, "no": 8}
    needs = {r["category"]: r["needs"] for r in rows}
    assert {c for c, n in needs.items() if n == "order"} == {"moved_from", "moved_to", "colour_before", "colour_after"}
    assert len({r["question_id"] for r in rows}) == len(rows)
    assert all((task / "videos" / r["video"]).is_file() for r in rows)


def test_generation_is_deterministic_and_atomic(task, tmp_path):
    again = generate(tmp_path / "again", seed=3, n_per_kind=8)
    assert (again / "questions.jsonl").read_bytes() == (task / "questions.jsonl").read_bytes()
    for p in sorted((task / "videos").iterdir()):
        assert (again / "videos" / p.name).read_bytes() == p.read_bytes(), p.name
    stamp = (again / "DONE").stat().st_mtime_ns
    generate(again, seed=3, n_per_kind=8)  # complete: left alone
    assert (again / "DONE").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_blank_control(task):
    clip = decode_video(task / "videos" / "blank.mp4", 8)
    assert len(clip.frames) == 8
    for f in clip.frames + blank_clip(3):
        assert (np.asarray(f) == np.array(BACKGROUND, np.uint8)).all()
