"""A deterministic synthetic video-question task: short clips of the synthetic image task's scenes.

Frames are drawn by `dc.data.synthetic.render` (3x3 grid, 48 px, red/green/blue/yellow circle/square/triangle/
cross). Each clip has 8-16 frames (8 fps) of one of four kinds:

* `static`   — one shape that stays put;
* `count`    — 1-4 shapes that stay put;
* `move`     — one shape that jumps from one cell to another at a switch frame;
* `recolour` — one shape that changes colour at a switch frame.

The switch frame lies in the middle half of the clip, so any sampling of >= 4 frames with the reference's rule
(`dc.data.video.sample_frame_indices`) sees both states. Questions say what they need (`needs`), so a report can
say honestly what a training-free video path can and cannot answer:

| needs    | categories                                   | answerable from                                    |
|----------|----------------------------------------------|----------------------------------------------------|
| `frame`  | colour, shape, position, count               | any single frame (same wording as the image task)  |
| `frames` | moved, changed (yes / no)                    | two frames, in any order                           |
| `order`  | moved_from, moved_to, colour_before/after    | frames *and* which came first                      |

`mean` aggregation blurs the two states of a moving or recoloured shape into one; `pool`/`concat` keep the frames
in time order, but a model trained on images only has never been asked about order. Yes/no answers are balanced
(asked of as many static clips as changing ones).

Files written under `root` (atomically: built in a temp dir, renamed; `DONE` written last):

* `videos/{kind}_{k:04d}.mp4` — H.264 RGB, lossless (libx264rgb, crf 0: decoded pixels equal the rendered ones)
* `videos/blank.mp4`          — the blank-video control (background only)
* `questions.jsonl`           — `question_id`, `video` (relative to `videos/`), `text`, `answer`, `category`, `needs`
* `DONE`                      — version and arguments; a folder without it (or of another version) is regenerated
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from dc.data.synthetic import COLOURS, GRID, IMAGE_SIZE, POSITIONS, SHAPES, Obj, questions, render
from dc.utils.files import publish_dir

VERSION = 1  # bump when the generated content changes
FPS = 8
KINDS = ("static", "count", "move", "recolour")
NEEDS = {
    "colour": "frame",
    "shape": "frame",
    "position": "frame",
    "count": "frame",
    "moved": "frames",
    "changed": "frames",
    "moved_from": "order",
    "moved_to": "order",
    "colour_before": "order",
    "colour_after": "order",
}
TEMPORAL_QUESTIONS = {
    "moved": "Did the shape move?",
    "changed": "Did the shape change colour?",
    "moved_from": "Where did the shape move from?",
    "moved_to": "Where did the shape move to?",
    "colour_before": "What colour was the shape at the start?",
    "colour_after": "What colour was the shape at the end?",
}


@dataclass(frozen=True)
class Clip:
    """One clip: the scene of every frame."""

    kind: str
    scenes: list[list[Obj]]


def _switch(rng: random.Random, n: int) -> int:
    """First frame of the second state, in the middle half of the clip."""
    return rng.randint((n + 3) // 4, (3 * n) // 4)


def make_clip(rng: random.Random, kind: str, n_frames: int, n_shapes: int = 1) -> Clip:
    """Draw a random clip of `kind` (see module docstring) with `n_frames` frames."""
    if kind not in KINDS:
        raise ValueError(f"clip kind {kind!r} is not one of {KINDS}")
    cells = rng.sample(range(GRID * GRID), n_shapes if kind == "count" else 2)
    shapes = rng.sample(SHAPES, n_shapes if kind == "count" else 1)
    colours = rng.sample(list(COLOURS), n_shapes if kind == "count" else 2)
    if kind == "count":
        scene = [Obj(c, s, cell) for c, s, cell in zip(colours, shapes, cells, strict=True)]
        return Clip(kind, [scene] * n_frames)
    first = Obj(colours[0], shapes[0], cells[0])
    if kind == "static":
        return Clip(kind, [[first]] * n_frames)
    second = Obj(first.colour, first.shape, cells[1]) if kind == "move" else Obj(colours[1], first.shape, first.cell)
    k = _switch(rng, n_frames)
    return Clip(kind, [[first]] * k + [[second]] * (n_frames - k))


def clip_questions(clip: Clip) -> list[tuple[str, str, str]]:
    """(category, question, answer) for what the clip supports; see the module docstring's table."""
    first, last = clip.scenes[0], clip.scenes[-1]
    if clip.kind == "count":
        return [q for q in questions(first) if q[0] == "count"]
    o, p = first[0], last[0]
    by_cat = {c: (c, q, a) for c, q, a in questions(first)}
    if clip.kind == "static":
        return [
            by_cat["colour"],
            by_cat["shape"],
            by_cat["position"],
            ("moved", TEMPORAL_QUESTIONS["moved"], "no"),
            ("changed", TEMPORAL_QUESTIONS["changed"], "no"),
        ]
    if clip.kind == "move":
        return [
            by_cat["colour"],
            by_cat["shape"],
            ("moved", TEMPORAL_QUESTIONS["moved"], "yes"),
            ("moved_from", TEMPORAL_QUESTIONS["moved_from"], POSITIONS[o.cell]),
            ("moved_to", TEMPORAL_QUESTIONS["moved_to"], POSITIONS[p.cell]),
        ]
    return [
        by_cat["shape"],
        ("changed", TEMPORAL_QUESTIONS["changed"], "yes"),
        ("colour_before", TEMPORAL_QUESTIONS["colour_before"], o.colour),
        ("colour_after", TEMPORAL_QUESTIONS["colour_after"], p.colour),
    ]


def render_clip(clip: Clip, size: int = IMAGE_SIZE) -> list[Image.Image]:
    """The clip's frames as RGB images."""
    return [render(scene, size) for scene in clip.scenes]


def blank_clip(num_frames: int = 8, size: int = IMAGE_SIZE) -> list[Image.Image]:
    """The blank-video control: `num_frames` frames of background only (the image task's blank canvas)."""
    return [render([], size) for _ in range(num_frames)]


def write_video(path: str | os.PathLike, frames: Sequence[Image.Image], fps: int = FPS) -> Path:
    """Write RGB frames as a lossless H.264 RGB mp4 (libx264rgb, crf 0; width and height must be even).

    Every FFmpeg-based reader decodes it to the same pixels; some hardware players do not support RGB H.264.
    """
    if not frames:
        raise ValueError("a video needs at least one frame")
    path = Path(path)
    w, h = frames[0].size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264rgb", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "rgb24"
        stream.options = {"crf": "0", "preset": "medium"}
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(img.convert("RGB")), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush the encoder's delayed frames
    return path


def write_blank_video(path: str | os.PathLike, num_frames: int = 8, size: int = IMAGE_SIZE) -> Path:
    """Write the blank-video control clip."""
    return write_video(path, blank_clip(num_frames, size))


def vocabulary_sentences() -> list[str]:
    """Phrases the video questions add to the image task's (for a tiny tokenizer's corpus)."""
    return list(TEMPORAL_QUESTIONS.values()) + ["yes", "no", " yes", " no"]


def _complete(root: Path) -> bool:
    try:
        return json.loads((root / "DONE").read_text()).get("version") == VERSION
    except (OSError, ValueError):
        return False


def generate(
    root: str | os.PathLike, *, seed: int = 0, n_per_kind: int = 20, min_frames: int = 8, max_frames: int = 16
) -> Path:
    """Write the task under `root` unless a complete copy is already there; return `root`.

    Args:
        root: Output folder.
        seed: RNG seed; same arguments -> same clips and questions.
        n_per_kind: Clips of each kind (`count` clips cycle through 1-4 shapes).
        min_frames, max_frames: Frame-count range of a clip (inclusive; min_frames >= 4).
    """
    if not 4 <= min_frames <= max_frames:
        raise ValueError(f"need 4 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    root = Path(root)
    if _complete(root):
        return root
    with publish_dir(root, already_done=lambda: _complete(root)) as tmp:
        (tmp / "videos").mkdir()
        rng = random.Random(seed)
        rows = []
        for kind in KINDS:
            for k in range(n_per_kind):
                clip = make_clip(rng, kind, rng.randint(min_frames, max_frames), n_shapes=1 + k % 4)
                name = f"{kind}_{k:04d}.mp4"
                write_video(tmp / "videos" / name, render_clip(clip))
                for cat, text, answer in clip_questions(clip):
                    rows.append(
                        {
                            "question_id": f"{kind}-{k}-{cat}",
                            "video": name,
                            "text": text,
                            "answer": answer,
                            "category": cat,
                            "needs": NEEDS[cat],
                        }
                    )
        write_blank_video(tmp / "videos" / "blank.mp4", max_frames)
        (tmp / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp / "DONE").write_text(
            json.dumps(
                {
                    "version": VERSION,
                    "seed": seed,
                    "n_per_kind": n_per_kind,
                    "min_frames": min_frames,
                    "max_frames": max_frames,
                }
            )
        )
    return root
