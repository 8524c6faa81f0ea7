"""Held-out accuracy on the synthetic task, with a blank-image control.

The control feeds the same questions with a blank canvas instead of the scene: a model that really reads the
image drops to about chance (25 %), which shows the answers come through the visual path.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from PIL import Image

from dc.data.image import ImagePreprocessor
from dc.data.llava_json import read_records
from dc.data.synthetic import IMAGE_SIZE, render
from dc.eval.generate import generate_texts, prompt_sample
from dc.lit_module import load_module
from dc.utils.instantiate import instantiate

log = logging.getLogger(__name__)


def normalize(answer: str) -> str:
    """Lowercase, trim, drop a trailing full stop."""
    return answer.strip().lower().rstrip(".").strip()


def score(records: list[dict], answers: list[str]) -> dict[str, float]:
    """Accuracy (%) overall and per category."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for rec, ans in zip(records, answers, strict=True):
        ok = normalize(ans) == normalize(rec["answer"])
        hits[rec["category"]].append(ok)
        hits["all"].append(ok)
    return {f"acc/{k}": 100.0 * sum(v) / len(v) for k, v in sorted(hits.items())}


def evaluate_synthetic(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Generate answers for the held-out questions of a trained checkpoint and score them."""
    module = load_module(cfg.ckpt_path)
    vlm = module.vlm
    train_cfg = module.cfg
    bench = cfg.benchmark
    question_file = Path(bench.question_file) if bench.get("question_file") else Path(train_cfg.data.image_folder).parent / "eval.jsonl"
    image_folder = question_file.parent / "images"
    records = read_records(question_file)
    if cfg.get("limit"):
        records = records[: int(cfg.limit)]
    images = ImagePreprocessor(instantiate(train_cfg.encoder.image), aspect="pad")
    template = train_cfg.llm.template

    def samples(blank: bool) -> list[dict[str, Any]]:
        out = []
        blank_pixels = images(render([], IMAGE_SIZE)).unsqueeze(0)
        for rec in records:
            if blank:
                pixels = blank_pixels
            else:
                with Image.open(image_folder / rec["image"]) as img:
                    pixels = images(img).unsqueeze(0)
            out.append(prompt_sample(vlm, "<image>\n" + rec["text"], pixels, template))
        return out

    gen = {"batch_size": int(cfg.batch_size), "max_new_tokens": int(bench.max_new_tokens)}
    answers = generate_texts(vlm, samples(blank=False), **gen)
    metrics = score(records, answers)
    if bench.get("blank_control", True):
        blank_answers = generate_texts(vlm, samples(blank=True), **gen)
        metrics.update({f"blank_{k}": v for k, v in score(records, blank_answers).items()})
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "answers.jsonl", "w") as f:
        for rec, ans in zip(records, answers, strict=True):
            f.write(json.dumps({"question_id": rec["question_id"], "answer": ans, "gold": rec["answer"]}) + "\n")
    (out_dir / "results.json").write_text(json.dumps(metrics, indent=2))
    chance = 25.0
    print(f"held-out accuracy: {metrics['acc/all']:.1f} %  ({len(records)} questions; chance {chance:.0f} %)")
    if "blank_acc/all" in metrics:
        print(f"blank-image accuracy: {metrics['blank_acc/all']:.1f} %  (same model, blank canvas instead of the scene)")
    for k, v in metrics.items():
        log.info("%s = %.2f", k, v)
    return metrics, {"module": module, "answers": answers}
