"""Helpers for the data tests: LLaVA records with planted bad ones, image bytes, hand-written tar shards."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

NUM_VISUAL_TOKENS = 16
MAX_LENGTH = 128


def image_bytes(seed: int, size: tuple[int, int] = (40, 30), fmt: str = "JPEG") -> bytes:
    img = Image.new("RGB", size, ((37 * seed) % 256, (91 * seed) % 256, (53 * seed) % 256))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def qa(question: str, answer: str, image: bool) -> list[dict]:
    return [{"from": "human", "value": ("<image>\n" if image else "") + question}, {"from": "gpt", "value": answer}]


def good_records(n_image: int, n_text: int, prefix: str = "good") -> list[dict]:
    """Image records (`images/{id}.jpg`) with 1-3 turns and text-only records, all valid."""
    out = []
    for k in range(n_image):
        conv = qa("What colour is the circle?", "red", True)
        for _ in range(k % 3):
            conv += qa("Where is the blue shape?", "top left", False)
        out.append({"id": f"{prefix}-img-{k}", "image": f"{prefix}-img-{k}.jpg", "conversations": conv})
    for k in range(n_text):
        out.append(
            {"id": f"{prefix}-txt-{k}", "conversations": qa("How many shapes are there?" * (1 + k % 2), "two", False)}
        )
    return out


LONG = " ".join(["zebra"] * 300)

# (reason, record) — every kind of bad record the loaders must skip; image files listed in BAD_FILES.
BAD_RECORDS: list[tuple[str, Any]] = [
    ("malformed_record", ["not", "a", "dict"]),
    ("malformed_record", {"id": "bad-nofield", "image": "bad-nofield.jpg"}),
    ("no_conversations", {"id": "bad-empty", "conversations": []}),
    (
        "bad_conversation",
        {"id": "bad-roles", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "gpt", "value": "x"}]},
    ),
    ("tag_without_image", {"id": "bad-tag-noimg", "conversations": qa("What is it?", "a cat", True)}),
    (
        "image_without_tag",
        {"id": "bad-img-notag", "image": "bad-img-notag.jpg", "conversations": qa("What is it?", "a cat", False)},
    ),
    (
        "extra_image_tags",
        {"id": "bad-two-tags", "image": "bad-two-tags.jpg", "conversations": qa("<image> What is it?", "a cat", True)},
    ),
    ("missing_image", {"id": "bad-missing", "image": "does-not-exist.jpg", "conversations": qa("What?", "x", True)}),
    ("corrupt_image", {"id": "bad-corrupt", "image": "bad-corrupt.jpg", "conversations": qa("What?", "x", True)}),
    ("too_long", {"id": "bad-long", "image": "bad-long.jpg", "conversations": qa(LONG, "x", True)}),
]
BAD_FILES = {
    "bad-img-notag.jpg": image_bytes(1),
    "bad-two-tags.jpg": image_bytes(2),
    "bad-long.jpg": image_bytes(3),
    "bad-corrupt.jpg": b"\xff\xd8\xff\xe0 this is not a jpeg",
    "bad-nofield.jpg": image_bytes(4),
}


def planted_counts(extra: dict[str, int] | None = None) -> Counter:
    counts = Counter(reason for reason, _ in BAD_RECORDS)
    counts.update(extra or {})
    return counts


def interleave(good: list, bad: list) -> list:
    """Bad items spread evenly among the good ones."""
    out, step = [], max(1, len(good) // (len(bad) + 1))
    bad = list(bad)
    for k, g in enumerate(good):
        if bad and k % step == step - 1:
            out.append(bad.pop(0))
        out.append(g)
    return out + bad


def write_layout(
    root: Path, records: list, files: dict[str, bytes] | None = None, name: str = "data.json"
) -> tuple[Path, Path]:
    """LLaVA layout under `root`: the JSON (or JSONL) file and `images/` with every good record's image."""
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for k, rec in enumerate(records):
        if isinstance(rec, dict) and str(rec.get("id", "")).startswith(("good", "ok")) and "image" in rec:
            (folder / rec["image"]).write_bytes(image_bytes(k))
    for fname, data in (files or {}).items():
        (folder / fname).write_bytes(data)
    path = root / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path, folder


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    """A webdataset tar: each sample a dict with `__key__` and suffix -> bytes."""
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for suffix, data in s.items():
                if suffix == "__key__":
                    continue
                info = tarfile.TarInfo(f"{s['__key__']}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def shard_sample(key: str, record: Any, image: bytes | None = None) -> dict[str, bytes]:
    s = {"__key__": key, "json": json.dumps(record).encode()}
    if image is not None:
        s["jpg"] = image
    return s
