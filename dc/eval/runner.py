"""Run one benchmark on a checkpoint: generate, stream answers, resume, score (with controls), report.

The benchmark is the `benchmark` config node (`configs/benchmark/<name>.yaml`, `_target_` its class). Answers
stream to `<output_dir>/<benchmark>_answers.jsonl` as they are produced; a re-run with the same output folder
skips ids already answered, so an interrupted evaluation resumes. A record whose image cannot be read is skipped
and counted, never a crash half-way through. A benchmark's control passes (the synthetic task's blank images)
run the same way into `<benchmark>_<control>_answers.jsonl` and are reported as `<control>_<metric>`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from dc.data.visual import VisualProcessor, build_visual_processor
from dc.eval.benchmarks.answers_io import AnswerWriter, answered_ids, read_answers
from dc.eval.benchmarks.base import Benchmark, EvalRecord, Skip
from dc.eval.benchmarks.report import flatten_metrics, write_report
from dc.eval.generate import VisualInput, generate_texts, prompt_sample
from dc.models.vlm import VLM
from dc.training.checkpoint import load_vlm
from dc.utils.instantiate import instantiate, model_targets, trusted_prefixes

log = logging.getLogger(__name__)


def record_inputs(record: EvalRecord, visual: VisualProcessor) -> list[VisualInput]:
    """The visual inputs of a record (its images, in order), preprocessed for the model."""
    paths = record.image if isinstance(record.image, list) else [record.image] if record.image else []
    inputs = []
    for path in paths:
        with Image.open(path) as img:
            img.load()
            inputs.append(visual(img))
    return inputs


def answer_records(
    vlm: VLM,
    visual: VisualProcessor,
    records: Sequence[EvalRecord],
    answers_path: Path,
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
                    samples.append(prompt_sample(vlm, rec.prompt, record_inputs(rec, visual)))
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


def _benchmark(cfg: DictConfig) -> Benchmark:
    bench = instantiate(cfg.benchmark, allowed=trusted_prefixes(cfg.get("extra_target_prefixes")))
    if not isinstance(bench, Benchmark):
        raise ValueError(f"benchmark._target_={cfg.benchmark.get('_target_')} is not a Benchmark")
    return bench


def run_benchmark(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """`python eval.py ckpt_path=... benchmark=<name>`: answers, result JSON + markdown table."""
    extra = cfg.get("extra_target_prefixes")
    vlm, model_cfg, _ = load_vlm(cfg.ckpt_path, extra_prefixes=extra)
    visual = build_visual_processor(model_cfg, aspect=str(cfg.image_aspect), allowed=model_targets(extra))
    bench = _benchmark(cfg)
    records, skips = bench.load()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generation = {k: v for k, v in bench.generation_kwargs.items() if k in ("do_sample", "num_beams", "temperature")}
    run = {"batch_size": int(cfg.batch_size), "generation": generation}
    answers_path = out_dir / f"{bench.name}_answers.jsonl"
    skips += answer_records(vlm, visual, records, answers_path, **run)
    skipped_ids = {s.id for s in skips}
    kept = [r for r in records if r.id not in skipped_ids]
    answers = read_answers(answers_path)
    result = bench.score(kept, answers, skips)
    for control in bench.controls:
        control_records = bench.control_records(control, kept, out_dir)
        control_path = out_dir / f"{bench.name}_{control}_answers.jsonl"
        control_skips = answer_records(vlm, visual, control_records, control_path, **run)
        control_result = bench.score(control_records, read_answers(control_path), control_skips)
        result["metrics"].update({f"{control}_{k}": v for k, v in control_result["metrics"].items()})
    bench.write_submission(kept, answers, out_dir)
    meta = {"ckpt_path": str(cfg.ckpt_path), "benchmark": bench.name}
    write_report({bench.name: result}, out_dir, stem=f"{bench.name}_results", meta=meta)
    metrics = {f"{bench.name}/{k}": v for k, v in flatten_metrics(result).items()}
    counts = Counter(s.reason for s in skips)
    log.info("%s: %s (skipped: %s)", bench.name, result.get("metrics"), dict(counts))
    print(bench.summary(result))
    print(f"{bench.name}: {len(kept)} questions, skipped {dict(counts) or 0}; answers and results in {out_dir}")
    return metrics, {"vlm": vlm, "result": result, "answers": answers}
