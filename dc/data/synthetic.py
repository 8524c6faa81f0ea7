"""A deterministic synthetic visual-question task, written in the LLaVA layout (JSON list + image folder).

Each scene is a 3×3 grid of cells holding 1–4 shapes, with distinct shapes and distinct colours; a cell is
16×16 pixels, one patch of the tiny encoder. Four question types need the image to answer, with equally likely
answers (chance: 1/4, 1/4, 1/9, 1/4):

* colour   — "What colour is the shape?"           → red / green / blue / yellow
* shape    — "What shape is in the picture?"       → circle / square / triangle / cross
* position — "Where is the shape?"                 → one of 9 cells (top left, top, ..., centre, ..., bottom right)
* count    — "How many shapes are there?"          → one / two / three / four

Colour, shape and position are asked about scenes with one shape, count about scenes with 1–4. Asking "what
colour is the circle?" in a crowded scene needs a two-step lookup (find the circle, read its colour) that a
from-scratch tiny LLM does not learn in the few hundred CPU steps the demo allows (measured: chance level
after 375 steps while count reached 100 %); one-object questions still need the image, which the blank-image
control checks.

Files written under `root`:

* `images/{split}_{k:05d}.png`
* `pretrain.json`  — LLaVA records, one caption each (stage 1, `plain` template)
* `instruct.json`  — LLaVA records, one multi-turn conversation with every question type (stage 2)
* `eval.jsonl`     — held-out questions in LLaVA's question-file format (`question_id`, `image`, `text`)
                     plus `answer` and `category`
* `DONE`           — written last; a folder without it is regenerated (atomic: built in a temp dir, renamed)
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

from dc.utils.files import publish_dir

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40)}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
GRID = 3
NUMBERS = ("one", "two", "three", "four")
CATEGORIES = ("colour", "shape", "position", "count")
IMAGE_SIZE = 48
VERSION = 5  # bump when the generated content changes; an older folder is regenerated


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    cell: int  # index into POSITIONS


def _scene(rng: random.Random, n: int | None = None) -> list[Obj]:
    n = rng.randint(1, 4) if n is None else n
    cells = rng.sample(range(GRID * GRID), n)
    shapes = rng.sample(SHAPES, n)
    colours = rng.sample(list(COLOURS), n)
    return [Obj(c, s, cell) for c, s, cell in zip(colours, shapes, cells, strict=True)]


def render(
    objects: list[Obj], size: int | tuple[int, int] = IMAGE_SIZE, background: tuple[int, int, int] = (245, 245, 245)
) -> Image.Image:
    """Draw the scene: each shape fills most of its cell; `size` is a side or (width, height) (cells stretch)."""
    width, height = (size, size) if isinstance(size, int) else size
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    cell_w, cell_h = width // GRID, height // GRID
    mx, my = max(1, width // 24), max(1, height // 24)
    for o in objects:
        x0, y0 = (o.cell % GRID) * cell_w + mx, (o.cell // GRID) * cell_h + my
        x1, y1 = x0 + cell_w - 2 * mx - 1, y0 + cell_h - 2 * my - 1
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif o.shape == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        elif o.shape == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        else:  # cross
            t = max(1, (x1 - x0) // 6)
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            draw.rectangle([x0, cy - t, x1, cy + t], fill=fill)
            draw.rectangle([cx - t, y0, cx + t, y1], fill=fill)
    return img


def questions(objects: list[Obj]) -> list[tuple[str, str, str]]:
    """(category, question, answer) for every question type the scene supports (attributes: one-shape scenes)."""
    out = [("count", "How many shapes are there?", NUMBERS[len(objects) - 1])]
    if len(objects) == 1:
        o = objects[0]
        out += [
            ("colour", "What colour is the shape?", o.colour),
            ("shape", "What shape is in the picture?", o.shape),
            ("position", "Where is the shape?", POSITIONS[o.cell]),
        ]
    return out


def caption(objects: list[Obj]) -> str:
    parts = [f"a {o.colour} {o.shape} at the {POSITIONS[o.cell]}" for o in sorted(objects, key=lambda o: o.cell)]
    return (", ".join(parts) + ".").capitalize()


def vocabulary_sentences() -> list[str]:
    """Every phrase the task uses (the tiny tokenizer's training corpus)."""
    words = list(COLOURS) + list(SHAPES) + list(POSITIONS) + list(NUMBERS)
    sents = ["What colour is the shape?", "What shape is in the picture?", "Where is the shape?"]
    sents += [f"What colour is the {s}?" for s in SHAPES] + [f"What shape is at the {p}?" for p in POSITIONS]
    sents += [f"Where is the {c} shape?" for c in COLOURS] + ["How many shapes are there?"]
    sents += [f"A {c} {s} at the {p}, a {c} {s}." for c in COLOURS for s in SHAPES for p in POSITIONS]
    sents += ["Describe the image briefly.", "<image>\n"] + [" " + w for w in words] + words
    return sents


def _turns(pairs: list[tuple[str, str, str]]) -> list[dict]:
    conv = []
    for k, (_, q, a) in enumerate(pairs):
        conv.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + q})
        conv.append({"from": "gpt", "value": a})
    return conv


def _complete(root: Path) -> bool:
    try:
        return json.loads((root / "DONE").read_text()).get("version") == VERSION
    except (OSError, ValueError):
        return False


def generate(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    n_pretrain: int = 2000,
    n_instruct: int = 4000,
    n_eval: int = 100,
    sizes: list[list[int]] | None = None,
) -> Path:
    """Write the dataset under `root` unless a complete copy is already there; return `root`.

    Instruction scenes hold one shape (all four question types; 3 in 4 scenes) or 2–4 shapes (count only).
    The held-out set has `n_eval` questions of each type, answers uniform. `sizes`: [width, height] choices drawn
    per image (varied aspect ratios, e.g. for AnyRes); None: every image 48 × 48. Same arguments → same bytes.
    """
    root = Path(root)
    if _complete(root):
        return root
    with publish_dir(root, already_done=lambda: _complete(root)) as tmp:
        (tmp / "images").mkdir()
        rng = random.Random(seed)

        size_rng = random.Random(f"{seed}:sizes")  # its own stream: `sizes=None` gives the same scenes as before

        def scene(split: str, k: int, n: int | None = None) -> tuple[str, list[Obj]]:
            objs = _scene(rng, n)
            name = f"{split}_{k:05d}.png"
            size = tuple(size_rng.choice(sizes)) if sizes else IMAGE_SIZE
            render(objs, size).save(tmp / "images" / name)
            bar.update(1)
            return name, objs

        total = n_pretrain + n_instruct + 2 * n_eval
        bar = tqdm(total=total, desc=f"synthetic data -> {root.name}", unit="img", mininterval=2.0)
        pretrain = []
        for k in range(n_pretrain):
            name, objs = scene("pretrain", k)
            conv = [
                {"from": "human", "value": "<image>\nDescribe the image briefly."},
                {"from": "gpt", "value": caption(objs)},
            ]
            pretrain.append({"id": f"pretrain-{k}", "image": name, "conversations": conv})
        instruct = []
        for k in range(n_instruct):
            name, objs = scene("instruct", k, 1 if k % 4 else rng.randint(2, 4))
            pairs = questions(objs)
            rng.shuffle(pairs)
            instruct.append({"id": f"instruct-{k}", "image": name, "conversations": _turns(pairs)})
        held_out = []
        for k in range(n_eval):  # one-shape scenes for the attribute questions
            name, objs = scene("eval", k, 1)
            for cat, q, a in questions(objs)[1:]:
                held_out.append(
                    {"question_id": f"eval-{k}-{cat}", "image": name, "text": q, "answer": a, "category": cat}
                )
        for k in range(n_eval):  # scenes of 1, 2, 3, 4, 1, ... shapes for the count question
            name, objs = scene("eval", n_eval + k, 1 + k % 4)
            cat, q, a = questions(objs)[0]
            held_out.append(
                {"question_id": f"eval-{n_eval + k}-{cat}", "image": name, "text": q, "answer": a, "category": cat}
            )
        bar.close()
        (tmp / "pretrain.json").write_text(json.dumps(pretrain))
        (tmp / "instruct.json").write_text(json.dumps(instruct))
        (tmp / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
        done = {"version": VERSION, "seed": seed, "n_pretrain": n_pretrain, "n_instruct": n_instruct, "n_eval": n_eval}
        if sizes:
            done["sizes"] = [list(s) for s in sizes]
        (tmp / "DONE").write_text(json.dumps(done))
    return root
