"""Run one image benchmark on a checkpoint: generate, stream answers, resume, score, report.

Answers stream to `<output_dir>/<benchmark>_answers.jsonl` as they are produced; a re-run with the same
output folder skips ids already answered, so an interrupted evaluation resumes. A record whose image cannot be
read is skipped and counted, never a crash half-way through.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from dc.data.image import ImagePreprocessor
from dc.eval.benchmarks import EvalRecord, Skip, get_benchmark
from dc.eval.benchmarks.answers_io import AnswerWriter, answered_ids, read_answers
from dc.eval.benchmarks.report import flatten_metrics, write_report
from dc.eval.generate import generate_texts, prompt_sample
from dc.lit_module import load_module
from dc.models.vlm import VLM
from dc.utils.instantiate import instantiate

log = logging.getLogger(__name__)


def _images(record: EvalRecord, images: ImagePreprocessor) -> torch.Tensor | None:
    paths = record.image if isinstance(record.image, list) else [record.image] if record.image else []
    tensors = []
    for path in paths:
        with Image.open(path) as img:
            tensors.append(images(img))
    return torch.stack(tensors) if tensors else None


def answer_records(
    vlm: VLM,
    records: Sequence[EvalRecord],
    answers_path: Path,
    images: ImagePreprocessor,
    *,
    batch_size: int,
    generation: dict[str, Any] | None = None,
) -> list[Skip]:
    """Generate answers for records not yet in `answers_path`, appending each batch as it finishes."""
    done = answered_ids(answers_path)
    todo = [r for r in records if r.id not in done]
    skips: list[Skip] = []
    with AnswerWriter(answers_path) as writer, tqdm(total=len(todo), desc=answers_path.stem, unit="q") as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            ready, samples = [], []
            for rec in chunk:
                try:
                    samples.append(prompt_sample(vlm, rec.prompt, _images(rec, images)))
                    ready.append(rec)
                except (OSError, ValueError) as err:  # unreadable image, tag/image mismatch
                    skips.append(Skip(rec.id, "unreadable_input", str(err)))
                    log.warning("skipping %s: %s", rec.id, err)
            max_new = max((r.max_new_tokens for r in ready), default=1)
            texts = generate_texts(vlm, samples, batch_size=batch_size, max_new_tokens=max_new, **(generation or {}))
            for rec, text in zip(ready, texts, strict=True):
                writer.write(rec.id, text)
            bar.update(len(chunk))
    return skips


def run_benchmark(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """`python eval.py ckpt_path=... benchmark=<name>`: answers, result JSON + markdown table."""
    bench_cfg = cfg.benchmark
    module = load_module(cfg.ckpt_path)
    vlm = module.vlm
    options = dict(OmegaConf.to_container(bench_cfg.options, resolve=True)) if bench_cfg.get("options") else {}
    if cfg.get("limit"):
        options["limit"] = int(cfg.limit)
    bench = get_benchmark(bench_cfg.name, root=bench_cfg.root, **options)
    records, skips = bench.load()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = ImagePreprocessor(instantiate(module.cfg.encoder.image), aspect=str(cfg.image_aspect))
    generation = {k: v for k, v in bench.generation_kwargs.items() if k in ("do_sample", "num_beams", "temperature")}
    answers_path = out_dir / f"{bench.name}_answers.jsonl"
    skips += answer_records(vlm, records, answers_path, images, batch_size=int(cfg.batch_size), generation=generation)
    skipped_ids = {s.id for s in skips}
    kept = [r for r in records if r.id not in skipped_ids]
    answers = read_answers(answers_path)
    result = bench.score(kept, answers, skips)
    bench.write_submission(kept, answers, out_dir)
    meta = {"ckpt_path": str(cfg.ckpt_path), "benchmark": bench.name}
    write_report({bench.name: result}, out_dir, stem=f"{bench.name}_results", meta=meta)
    metrics = {f"{bench.name}/{k}": v for k, v in flatten_metrics(result).items()}
    counts = Counter(s.reason for s in skips)
    log.info("%s: %s (skipped: %s)", bench.name, result.get("metrics"), dict(counts))
    print(f"{bench.name}: {result.get('metrics')}  skipped: {dict(counts) or 0}")
    return metrics, {"module": module, "result": result, "answers": answers}
