"""A deterministic synthetic visual-question task, written in the LLaVA layout (JSON list + image folder).

Each scene is a 2×2 grid of cells holding 1–4 shapes, with distinct shapes and distinct colours. Four question
types need the image to answer, each with 4 equally likely answers (chance = 25 %):

* colour   — "What colour is the circle?"          → red / green / blue / yellow
* shape    — "What shape is in the top left?"      → circle / square / triangle / cross
* position — "Where is the blue shape?"            → top left / top right / bottom left / bottom right
* count    — "How many shapes are there?"          → one / two / three / four

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
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40)}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
NUMBERS = ("one", "two", "three", "four")
CATEGORIES = ("colour", "shape", "position", "count")
IMAGE_SIZE = 64
SUFFIX = " Answer with a single word or phrase."


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    cell: int  # index into POSITIONS


def _scene(rng: random.Random) -> list[Obj]:
    n = rng.randint(1, 4)
    cells = rng.sample(range(4), n)
    shapes = rng.sample(SHAPES, n)
    colours = rng.sample(list(COLOURS), n)
    return [Obj(c, s, cell) for c, s, cell in zip(colours, shapes, cells, strict=True)]


def render(objects: list[Obj], size: int = IMAGE_SIZE, background: tuple[int, int, int] = (245, 245, 245)) -> Image.Image:
    """Draw the scene: each shape fills most of its cell."""
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    half = size // 2
    m = max(2, size // 16)
    for o in objects:
        x0, y0 = (o.cell % 2) * half + m, (o.cell // 2) * half + m
        x1, y1 = x0 + half - 2 * m, y0 + half - 2 * m
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif o.shape == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        elif o.shape == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        else:  # cross
            t = (x1 - x0) // 6
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            draw.rectangle([x0, cy - t, x1, cy + t], fill=fill)
            draw.rectangle([cx - t, y0, cx + t, y1], fill=fill)
    return img


def questions(objects: list[Obj], rng: random.Random) -> list[tuple[str, str, str]]:
    """One (category, question, answer) per question type, about a randomly chosen object."""
    o = rng.choice(objects)
    return [
        ("colour", f"What colour is the {o.shape}?", o.colour),
        ("shape", f"What shape is in the {POSITIONS[o.cell]}?", o.shape),
        ("position", f"Where is the {o.colour} shape?", POSITIONS[o.cell]),
        ("count", "How many shapes are there?", NUMBERS[len(objects) - 1]),
    ]


def caption(objects: list[Obj]) -> str:
    parts = [f"a {o.colour} {o.shape} in the {POSITIONS[o.cell]}" for o in sorted(objects, key=lambda o: o.cell)]
    return (", ".join(parts) + ".").capitalize()


def vocabulary_sentences() -> list[str]:
    """Every phrase the task uses (the tiny tokenizer's training corpus)."""
    words = list(COLOURS) + list(SHAPES) + list(POSITIONS) + list(NUMBERS)
    sents = [f"What colour is the {s}?" for s in SHAPES] + [f"What shape is in the {p}?" for p in POSITIONS]
    sents += [f"Where is the {c} shape?" for c in COLOURS] + ["How many shapes are there?", SUFFIX]
    sents += [f"A {c} {s} in the {p}, a {c} {s}." for c in COLOURS for s in SHAPES for p in POSITIONS]
    sents += ["Describe the image briefly.", "<image>\n"] + [" " + w for w in words] + words
    return sents


def _turns(pairs: list[tuple[str, str, str]]) -> list[dict]:
    conv = []
    for k, (_, q, a) in enumerate(pairs):
        conv.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + q + SUFFIX})
        conv.append({"from": "gpt", "value": a})
    return conv


def generate(root: str | os.PathLike, *, seed: int = 0, n_pretrain: int = 2000, n_instruct: int = 4000, n_eval: int = 100) -> Path:
    """Write the dataset under `root` unless a complete copy is already there; return `root`.

    `n_eval` scenes give 4 held-out questions each (one per type). Same arguments → same bytes.
    """
    root = Path(root)
    if (root / "DONE").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp", dir=root.parent))
    try:
        (tmp / "images").mkdir()
        rng = random.Random(seed)

        def scene(split: str, k: int) -> tuple[str, list[Obj]]:
            objs = _scene(rng)
            name = f"{split}_{k:05d}.png"
            render(objs).save(tmp / "images" / name)
            return name, objs

        pretrain = []
        for k in range(n_pretrain):
            name, objs = scene("pretrain", k)
            conv = [{"from": "human", "value": "<image>\nDescribe the image briefly."}, {"from": "gpt", "value": caption(objs)}]
            pretrain.append({"id": f"pretrain-{k}", "image": name, "conversations": conv})
        instruct = []
        for k in range(n_instruct):
            name, objs = scene("instruct", k)
            pairs = questions(objs, rng)
            rng.shuffle(pairs)
            instruct.append({"id": f"instruct-{k}", "image": name, "conversations": _turns(pairs)})
        held_out = []
        for k in range(n_eval):
            name, objs = scene("eval", k)
            for cat, q, a in questions(objs, rng):
                held_out.append({"question_id": f"eval-{k}-{cat}", "image": name, "text": q + SUFFIX, "answer": a, "category": cat})
        (tmp / "pretrain.json").write_text(json.dumps(pretrain))
        (tmp / "instruct.json").write_text(json.dumps(instruct))
        (tmp / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
        (tmp / "DONE").write_text(json.dumps({"seed": seed, "n_pretrain": n_pretrain, "n_instruct": n_instruct, "n_eval": n_eval}))
        if (root / "DONE").exists():  # another process finished first
            shutil.rmtree(tmp)
            return root
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
