"""Data-loader benchmark: throughput per worker against a plain LLaVA-style dataset, and padding with/without grouping.

    .venv/bin/python experiments/data_loader/bench.py [--n-images 480] [--repeats 3] [--out experiments/data_loader/results.json]

1. Throughput. `--n-images` synthetic 640x480 JPEGs (gradients, shapes, noise; ~COCO-sized files) with 2-round
   conversations. Every loader pads to square, runs the CLIP-L/336 image processor (config values of
   configs/encoder/clip_l336.yaml, built offline) and tokenises (tiny byte-level tokenizer: the Vicuna one is not
   available offline), batch 16. Per worker = samples per CPU-second of a loader run in-process (num_workers=0,
   torch threads = 1: exactly one worker's work), the three loaders pulled one batch each in turn so that a busy
   phase of the shared machine hits all alike; also wall-clock samples/s with ONE worker process (one loader after
   the other: noisier). `--repeats` rounds, medians reported, whole epochs counted:
   * `baseline`: a plain LLaVA-style map dataset written here (JSON list in memory, `Image.open().convert("RGB")`,
     `expand2square`, processor, whole prompt tokenised with `tokenizer_image_token`, pad-and-stack collate);
   * `ours-json`: `LlavaDataModule(format="json")` (record store, checks, template label masking, grouped sampler);
   * `ours-shards`: `LlavaDataModule(format="shards")` over shards written by `dc.data.to_shards` (not timed).
2. Padding fraction on the synthetic task (`dc.data.synthetic.generate`): its instruction set alone has
   near-uniform lengths, so the mix is instruction conversations + pretrain captions (short, with image) + text-only
   conversations (instruction records with the image removed), 576 visual tokens per image (CLIP-L/336), batch 16,
   one epoch, grouped (`group_by_modality_length`) vs plain, for the JSON sampler and the shard stream.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset
from transformers import CLIPImageProcessor

from dc.data.datamodule import LlavaDataModule
from dc.data.image import ImagePreprocessor
from dc.data.synthetic import generate
from dc.data.tiny_tokenizer import build_tiny_tokenizer
from dc.data.to_shards import convert
from dc.data.visual import VisualProcessor
from dc.models.llms.templates.vicuna import VICUNA_SYSTEM, VicunaV1
from dc.models.visual import SingleView, ViewTokens

CLIP_336 = dict(
    size={"shortest_edge": 336},
    crop_size={"height": 336, "width": 336},
    do_center_crop=True,
    resample=3,
    image_mean=[0.48145466, 0.4578275, 0.40821073],
    image_std=[0.26862954, 0.26130258, 0.27577711],
)
BATCH = 16
VISUAL_TOKENS = 576

QUESTION = "What is happening in this picture, and what objects can you see near the {} of the scene?"
ANSWER = (
    "The image shows a busy {} scene with several people walking along the street while cars wait at the "
    "traffic light. On the left there is a small cafe with tables outside, and a red bicycle leans against "
    "a lamp post. The sky is overcast and the light suggests late afternoon."
)


# ---------------------------------------------------------------------------------------------------------------
# Data


def make_images(folder: Path, n: int, seed: int = 0) -> list[dict]:
    """n 640x480 JPEGs and LLaVA records for them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:480, 0:640]
    records = []
    for k in range(n):
        base = np.stack(
            [(xx * rng.uniform(0.1, 0.4) + yy * rng.uniform(0.1, 0.4) + rng.uniform(0, 255)) % 256 for _ in range(3)],
            -1,
        )
        arr = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x, y = rng.integers(0, 600), rng.integers(0, 440)
            box = [int(x), int(y), int(x + rng.integers(20, 200)), int(y + rng.integers(20, 200))]
            draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        name = f"{k:06d}.jpg"
        img.save(folder / name, quality=90)
        where = ("left", "right", "top", "bottom")[k % 4]
        conv = [
            {"from": "human", "value": "<image>\n" + QUESTION.format(where)},
            {"from": "gpt", "value": ANSWER.format("city")},
            {"from": "human", "value": "Describe the colours."},
            {"from": "gpt", "value": ANSWER.format("colourful")},
        ]
        records.append({"id": f"img-{k}", "image": name, "conversations": conv})
    return records


# ---------------------------------------------------------------------------------------------------------------
# The baseline: a plain LLaVA-style map dataset (haotian-liu/LLaVA train.py, reduced to what it computes)


def expand2square(pil_img: Image.Image, background_color: tuple) -> Image.Image:
    width, height = pil_img.size
    if width == height:
        return pil_img
    if width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    result = Image.new(pil_img.mode, (height, height), background_color)
    result.paste(pil_img, ((height - width) // 2, 0))
    return result


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = -200) -> list[int]:
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    sep = [image_token_index] * (offset + 1)
    merged = [e for sub in zip(chunks, [sep] * len(chunks)) for e in sub][:-1]
    for x in merged:
        ids.extend(x[offset:])
    return ids


class LlavaStyleDataset(Dataset):
    def __init__(self, json_path: Path, image_folder: Path, tokenizer, processor) -> None:
        self.list_data_dict = json.loads(Path(json_path).read_text())
        self.image_folder, self.tokenizer, self.processor = image_folder, tokenizer, processor

    def __len__(self) -> int:
        return len(self.list_data_dict)

    def __getitem__(self, i: int) -> dict:
        sources = copy.deepcopy(self.list_data_dict[i])
        image = Image.open(self.image_folder / sources["image"]).convert("RGB")
        image = expand2square(image, tuple(int(x * 255) for x in self.processor.image_mean))
        image = self.processor.preprocess(image, return_tensors="pt")["pixel_values"][0]
        prompt = VICUNA_SYSTEM + " "
        for turn in sources["conversations"]:
            value = turn["value"]
            if "<image>" in value:
                value = "<image>\n" + value.replace("<image>", "").strip()
            prompt += f"USER: {value} ASSISTANT:" if turn["from"] == "human" else f" {value}</s>"
        input_ids = torch.tensor(tokenizer_image_token(prompt, self.tokenizer))
        return {"input_ids": input_ids, "labels": input_ids.clone(), "image": image}


def llava_collate(pad_id: int):
    def collate(instances: list[dict]) -> dict:
        ids = torch.nn.utils.rnn.pad_sequence(
            [x["input_ids"] for x in instances], batch_first=True, padding_value=pad_id
        )
        labels = torch.nn.utils.rnn.pad_sequence([x["labels"] for x in instances], batch_first=True, padding_value=-100)
        return {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": ids.ne(pad_id),
            "images": torch.stack([x["image"] for x in instances]),
        }

    return collate


# ---------------------------------------------------------------------------------------------------------------
# Measurements


def cpu_throughput(loaders: dict[str, Any]) -> dict[str, float]:
    """Samples per CPU-second of each loader, run in this process (num_workers=0), pulled batch by batch in turn.

    In-process, CPU time is exactly one worker's work; taking one batch from each loader in turn means a busy
    phase of the shared machine slows all of them alike. The whole epoch is counted (the shard stream fills a
    sorting buffer of megabatch_factor x batch samples before its first batch).
    """
    its = {k: iter(v) for k, v in loaders.items()}
    cpu = dict.fromkeys(loaders, 0.0)
    n = dict.fromkeys(loaders, 0)
    while its:
        for name in list(its):
            c0 = time.process_time()
            try:
                batch = next(its[name])
            except StopIteration:
                del its[name]
                continue
            finally:
                cpu[name] += time.process_time() - c0
            n[name] += batch["input_ids"].shape[0]
    return {k: n[k] / cpu[k] for k in loaders}


def wall_throughput(loader) -> float:
    """Wall-clock samples/s of one epoch (worker start-up and hand-over to the main process included)."""
    n, t0 = 0, time.perf_counter()
    for batch in loader:
        n += batch["input_ids"].shape[0]
    return n / (time.perf_counter() - t0)


def padding_fraction(loader) -> tuple[float, int]:
    pad = tot = mixed = 0
    for b in loader:
        pad += b["num_padding"]
        tot += b["num_padding"] + b["num_tokens"]
        n_img = 0 if b["pixel_values"] is None else b["pixel_values"].shape[0]
        mixed += int(0 < n_img < b["input_ids"].shape[0])
    return pad / tot, mixed


def synthetic_mix(root: Path, n_instruct: int, n_pretrain: int, n_text: int) -> Path:
    syn = generate(root / "synthetic", n_pretrain=n_pretrain, n_instruct=n_instruct + n_text, n_eval=1)
    instruct = json.loads((syn / "instruct.json").read_text())
    pretrain = json.loads((syn / "pretrain.json").read_text())
    text_only = []
    for rec in instruct[n_instruct:]:
        conv = [dict(t, value=t["value"].replace("<image>\n", "")) for t in rec["conversations"]]
        text_only.append({"id": rec["id"] + "-text", "conversations": conv})
    mix = instruct[:n_instruct] + pretrain + text_only
    np.random.default_rng(0).shuffle(mix)
    path = syn / "mix.json"
    path.write_text(json.dumps(mix))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-images", type=int, default=256)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    tok = build_tiny_tokenizer()
    template = VicunaV1()
    proc = CLIPImageProcessor(**CLIP_336)
    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        records = make_images(root / "images", args.n_images)
        (root / "data.json").write_text(json.dumps(records))
        convert(root / "data.json", root / "images", root / "shards", max_size_mb=16, progress=False)
        common = dict(
            tokenizer=tok,
            template=template,
            visual=VisualProcessor(SingleView("pad"), proc, ViewTokens(24, 24), 336),
            batch_size=BATCH,
            max_length=2048,
            group_by_modality_length=True,
        )

        def loaders(workers: int) -> dict:
            return {
                "baseline": lambda: DataLoader(
                    LlavaStyleDataset(root / "data.json", root / "images", tok, proc),
                    batch_size=BATCH,
                    shuffle=True,
                    num_workers=workers,
                    collate_fn=llava_collate(tok.pad_token_id),
                ),
                "ours-json": lambda: _dm(
                    {**common, "num_workers": workers},
                    train_file=str(root / "data.json"),
                    image_folder=str(root / "images"),
                ),
                "ours-shards": lambda: _dm(
                    {**common, "num_workers": workers}, format="shards", shards=str(root / "shards"), shuffle_buffer=100
                ),
            }

        cpu: dict[str, list[float]] = {k: [] for k in loaders(0)}
        wall: dict[str, list[float]] = {k: [] for k in loaders(0)}
        for _ in range(args.repeats):
            for name, value in cpu_throughput({k: make() for k, make in loaders(0).items()}).items():
                cpu[name].append(value)
            for name, make in loaders(1).items():
                wall[name].append(wall_throughput(make()))
            print(" | ".join(f"{k}: {cpu[k][-1]:.1f}/cpu-s {wall[k][-1]:.1f}/s" for k in cpu), flush=True)
        results["throughput"] = {
            k: {
                "per_cpu_second": statistics.median(cpu[k]),
                "per_second_1_worker": statistics.median(wall[k]),
                "cpu_runs": cpu[k],
                "wall_runs": wall[k],
            }
            for k in cpu
        }
        results["mean_jpeg_kb"] = float(np.mean([p.stat().st_size for p in (root / "images").glob("*.jpg")]) / 1024)

        mix = synthetic_mix(root, n_instruct=1000, n_pretrain=1000, n_text=400)
        shards = root / "mix_shards"
        convert(mix, mix.parent / "images", shards, max_size_mb=16, progress=False)
        small = ImagePreprocessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))
        pad_common = {**common, "image_processor": small, "num_workers": 0}
        padding = {}
        for group in (True, False):
            for fmt, kw in {
                "json": {"train_file": str(mix), "image_folder": str(mix.parent / "images")},
                "shards": {"format": "shards", "shards": str(shards)},
            }.items():
                frac, mixed = padding_fraction(_dm({**pad_common, "group_by_modality_length": group}, **kw))
                padding[f"{fmt}/{'grouped' if group else 'plain'}"] = {"padding_fraction": frac, "mixed_batches": mixed}
                print(f"padding {fmt} grouped={group}: {100 * frac:.1f} % ({mixed} mixed-modality batches)", flush=True)
        results["padding"] = padding
        results["mix"] = {
            "instruct": 1000,
            "pretrain_captions": 1000,
            "text_only": 400,
            "visual_tokens": VISUAL_TOKENS,
            "batch_size": BATCH,
        }
    results["runtime_s"] = time.perf_counter() - start
    results["load_average_end"] = os.getloadavg()
    results["command"] = " ".join([".venv/bin/python", *sys.argv])
    Path(args.out).write_text(json.dumps(results, indent=1))
    t = results["throughput"]
    b = t["baseline"]
    print("\n| loader | samples / CPU-s (median) | vs baseline | samples/s, 1 worker, wall (median) | vs baseline |")
    print("|---|---|---|---|---|")
    for name, v in t.items():
        print(
            f"| {name} | {v['per_cpu_second']:.1f} | {v['per_cpu_second'] / b['per_cpu_second']:.2f}x | "
            f"{v['per_second_1_worker']:.1f} | {v['per_second_1_worker'] / b['per_second_1_worker']:.2f}x |"
        )
    print("\n| path | padding, grouped | padding, plain |\n|---|---|---|")
    for fmt in ("json", "shards"):
        print(
            f"| {fmt} | {100 * padding[f'{fmt}/grouped']['padding_fraction']:.1f} % | "
            f"{100 * padding[f'{fmt}/plain']['padding_fraction']:.1f} % |"
        )
    print(f"\n{results['runtime_s']:.0f} s")


def _dm(common: dict, **kw) -> DataLoader:
    dm = LlavaDataModule(**{**common, **kw})
    dm.setup()
    return dm.train_dataloader()


if __name__ == "__main__":
    main()
