"""Run one benchmark: load the model on the accelerator, answer on every rank, merge, score (with controls), report.

`python eval.py ckpt_path=<ckpt> benchmark=<name>` (or `model=hf model.path=<dir>`). The benchmark is the
`benchmark` config node (`configs/benchmark/<name>.yaml`); the model is the `model` node (`configs/model/`).
Devices come from `runtime` (accelerator, devices, num_nodes, precision): Lightning Fabric launches one process per
device (or joins a torchrun / SLURM launch, as training does), each process loads the model in the evaluation dtype
on its device and answers its share (`dc.eval.parallel`), rank 0 merges and scores. Answers stream to disk as they
are produced; a re-run resumes, and refuses answers that another model or setting produced (`overwrite=true` starts
fresh). A record whose image or video cannot be read is skipped and counted, never a crash half-way through.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from dc.eval.benchmarks.answers_io import AnswerWriter
from dc.eval.benchmarks.base import Benchmark, EvalRecord, Skip
from dc.eval.benchmarks.report import flatten_metrics, write_report
from dc.eval.models import InferenceModel, VideoSettings, Visual
from dc.eval.parallel import AnswerFiles, deal
from dc.utils.cli import report
from dc.utils.errors import ConfigError, check_interpolations, config_number, positive_int
from dc.utils.instantiate import instantiate, trusted_prefixes

log = logging.getLogger(__name__)

GENERATION_KEYS = ("do_sample", "num_beams", "temperature")


def record_visuals(record: EvalRecord, num_frames: int) -> list[Visual]:
    """The visual inputs of a record, in order: its images, then its video (sampled frames)."""
    paths = record.image if isinstance(record.image, list) else [record.image] if record.image else []
    out: list[Visual] = []
    for path in paths:
        with Image.open(path) as img:
            img.load()
            out.append(img)
    video = getattr(record, "video", None)
    if video is not None:
        from dc.data.video import decode_video

        out.append(decode_video(video, video_frames(record, num_frames)).frames)
    return out


def video_frames(record: EvalRecord, num_frames: int) -> int:
    """How many frames are sampled from a record's video: its benchmark's count, else `num_frames`
    (eval.py's `video.num_frames`).
    """
    return int(record.meta.get("num_frames") or num_frames)


def answer_records(
    model: InferenceModel,
    records: Sequence[EvalRecord],
    path: Path,
    *,
    batch_size: int,
    num_frames: int = 8,
    generation: dict[str, Any] | None = None,
    desc: str = "answers",
    crash_after: int | None = None,
) -> list[Skip]:
    """Answer `records` in batches, appending each answer to `path` as soon as its batch finishes."""
    from dc.data.records import BadRecord

    skips: list[Skip] = []
    written = 0
    with AnswerWriter(path) as writer, tqdm(total=len(records), desc=desc, unit="q", dynamic_ncols=True) as bar:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            ready, samples = [], []
            for rec in chunk:
                try:
                    samples.append(model.sample(rec.prompt, record_visuals(rec, num_frames)))
                    ready.append(rec)
                except BadRecord as err:  # unreadable / empty video
                    skips.append(Skip(rec.id, err.reason, err.detail))
                    log.warning("skipping %s: %s", rec.id, err)
                except (OSError, ValueError) as err:  # unreadable image, tag/input mismatch, too long
                    skips.append(Skip(rec.id, "unreadable_input", str(err)))
                    log.warning("skipping %s: %s", rec.id, err)
            if ready:
                max_new = max(r.max_new_tokens for r in ready)
                texts = model.generate(samples, max_new, **(generation or {}))
                for rec, text in zip(ready, texts, strict=True):
                    writer.write(rec.id, text)
                    written += 1
                    if crash_after is not None and written >= crash_after:
                        os.kill(os.getpid(), signal.SIGKILL)  # fault injection for resume tests
            bar.update(len(chunk))
    return skips


def make_fabric(runtime: DictConfig) -> L.Fabric:
    """A Fabric for the `runtime` node: one process per device (DDP launch), no model wrapping."""
    accelerator = str(runtime.get("accelerator", "auto"))
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    devices = runtime.get("devices", "auto")
    if devices == "auto":
        devices = torch.cuda.device_count() if accelerator == "cuda" else 1
    devices = int(devices)
    num_nodes = int(runtime.get("num_nodes", 1))
    parallel = int(devices) * num_nodes > 1
    strategy = "ddp" if parallel else "auto"
    return L.Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy)


def build_model(cfg: DictConfig, device: torch.device) -> InferenceModel:
    """The `model` node's model on `device`, in `runtime.precision`."""
    if cfg.model.get("_target_", "").endswith("DCModel") and not cfg.model.get("ckpt_path"):
        raise ConfigError("ckpt_path must be set (a dc checkpoint), or choose model=hf model.path=<dir or hub id>")
    video = cfg.get("video") or {}
    factory = instantiate(cfg.model, allowed=trusted_prefixes(cfg.get("extra_target_prefixes")))
    return factory(
        device=device,
        precision=str(cfg.runtime.get("precision", "auto")),
        image_aspect=str(cfg.image_aspect),
        video=VideoSettings(int(video.get("num_frames", 8)), str(video.get("aggregate", "pool"))),
        extra_prefixes=cfg.get("extra_target_prefixes"),
    )


def _benchmark(cfg: DictConfig) -> Benchmark:
    node = cfg.benchmark
    if "num_frames" in node and node.get("num_frames") is None:
        # a video benchmark follows `video.num_frames` unless its own `num_frames` is set
        node = OmegaConf.merge(node, {"num_frames": int((cfg.get("video") or {}).get("num_frames", 8))})
    bench = instantiate(node, allowed=trusted_prefixes(cfg.get("extra_target_prefixes")))
    if not isinstance(bench, Benchmark):
        raise ConfigError(f"benchmark._target_={cfg.benchmark.get('_target_')} is not a Benchmark")
    return bench


def _gather_skips(fabric: L.Fabric, skips: list[Skip]) -> list[Skip]:
    if fabric.world_size == 1:
        return skips
    gathered: list[Any] = [None] * fabric.world_size
    torch.distributed.all_gather_object(gathered, [tuple(s.__dict__.values()) for s in skips])
    return [Skip(*t) for part in gathered for t in part]


def resolved_paths(node: dict[str, Any]) -> dict[str, Any]:
    """A benchmark node with its folder (`root`) and any absolute `*_file` / `*_folder` / `*_dir` path written as
    one absolute, normalised path: `./data/x` and `data/x` are the same folder, `data/x` run from two working
    directories are not. (Other relative paths are relative to `root` and stay as written.)
    """
    out = dict(node)
    for key, value in node.items():
        if not isinstance(value, str) or not value:
            continue
        if key == "root" or (key.endswith(("_file", "_folder", "_dir")) and Path(value).is_absolute()):
            out[key] = str(Path(value).expanduser().resolve())
    return out


def _fingerprint(
    model: InferenceModel, cfg: DictConfig, bench: Benchmark, control: str | None, videos: bool
) -> dict[str, Any]:
    """What the answers of one pass depend on: answers recorded under another fingerprint are stale."""
    return _as_compared(
        {
            "model": model.fingerprint(),
            "benchmark": resolved_paths(OmegaConf.to_container(cfg.benchmark, resolve=True)),
            "control": control,
            "generation": {k: bench.generation_kwargs.get(k) for k in GENERATION_KEYS},
        },
        bench,
        videos,
    )


def _as_compared(fingerprint: dict[str, Any], bench: Benchmark, videos: bool) -> dict[str, Any]:
    """`fingerprint` less what cannot change an answer: `limit` (more or fewer questions keep the answers given),
    the benchmark's scoring-only options (`Benchmark.scoring_keys`: a judge's replies, a scoring rule, so a second
    run scores the answers already there) and, for a benchmark without videos, the model's video settings.
    """
    out = dict(fingerprint)
    out["benchmark"] = {
        k: v for k, v in (out.get("benchmark") or {}).items() if k != "limit" and k not in bench.scoring_keys
    }
    if not videos and isinstance(out.get("model"), dict):
        out["model"] = {k: v for k, v in out["model"].items() if k != "video"}
    return out


def _lengths(records: Sequence[EvalRecord]) -> list[int]:
    """A cheap prompt-length proxy for length-sorted batching: characters plus a weight per visual input."""
    out = []
    for r in records:
        images = len(r.image) if isinstance(r.image, list) else int(r.image is not None)
        out.append(len(r.prompt) + 4096 * (images + int(getattr(r, "video", None) is not None)))
    return out


def run_pass(
    fabric: L.Fabric,
    model: InferenceModel,
    cfg: DictConfig,
    bench: Benchmark,
    records: list[EvalRecord],
    out_dir: Path,
    control: str | None,
    videos: bool,
) -> tuple[dict[str, str], list[Skip]]:
    """Answer one pass (the benchmark, or one of its controls) on every rank; return (merged answers, skips).
    `videos`: whether the benchmark has videos (else the model's video settings cannot change its answers).
    """
    stem = f"{bench.name}_{control}_answers" if control else f"{bench.name}_answers"
    files = AnswerFiles(out_dir, stem)
    if fabric.global_rank == 0:
        files.check_fingerprint(
            _fingerprint(model, cfg, bench, control, videos),
            bool(cfg.get("overwrite", False)),
            # a fingerprint recorded by an earlier version (paths as written, scoring options and video settings
            # included): compared as this run would write it
            recorded_as_now=lambda rec: _as_compared(
                {**rec, "benchmark": resolved_paths(rec.get("benchmark") or {})}, bench, videos
            ),
        )
    fabric.barrier()
    done = files.answers()
    todo = [r for r in records if r.id not in done]
    mine = deal(todo, _lengths(todo), fabric.global_rank, fabric.world_size)
    generation = {k: v for k, v in bench.generation_kwargs.items() if k in GENERATION_KEYS}
    video = cfg.get("video") or {}
    skips = answer_records(
        model,
        mine,
        files.part(fabric.global_rank),
        batch_size=int(cfg.batch_size),
        num_frames=int(video.get("num_frames", 8)),
        generation=generation,
        desc=f"{stem} (rank {fabric.global_rank}/{fabric.world_size})" if fabric.world_size > 1 else stem,
        crash_after=cfg.get("crash_after_answers"),
    )
    fabric.barrier()
    skips = _gather_skips(fabric, skips)
    if fabric.global_rank == 0:
        files.merge([r.id for r in records])
    fabric.barrier()
    return files.answers(), skips


def check_options(cfg: DictConfig) -> None:
    """`batch_size` a positive integer, `limit` one or null (`limit=0` would score no question, `limit=-3` all but
    three), frame counts and the process layout (`runtime.devices`, `runtime.num_nodes`).

    Raises:
        ConfigError: naming the key.
    """
    positive_int(cfg.get("batch_size", 1), "batch_size")
    if cfg.get("limit") is not None:
        positive_int(cfg.limit, "limit", "a positive integer (questions to answer) or null (all)")
    positive_int((cfg.get("video") or {}).get("num_frames", 8), "video.num_frames")
    frames = (cfg.get("benchmark") or {}).get("num_frames")
    if frames is not None:
        positive_int(frames, "benchmark.num_frames", "a positive integer or null (video.num_frames)")
    model = cfg.get("model")
    for key in model.keys() if isinstance(model, DictConfig) else ():
        if OmegaConf.is_missing(model, key):
            hint = " (model=hf: an HF Llava directory or hub id)" if key == "path" else ""
            raise ConfigError(f"model.{key} must be set{hint}")
    runtime = cfg.get("runtime") or {}
    if runtime.get("devices", "auto") != "auto":
        positive_int(runtime.devices, "runtime.devices", "auto or a positive integer")
    positive_int(runtime.get("num_nodes", 1), "runtime.num_nodes")


def _model_class_takes_videos(cfg: DictConfig) -> bool:
    """Whether the `model` node's class (one of dc's own; others are asked once built) takes videos."""
    from dc.eval import models

    module, _, name = str(cfg.model.get("_target_", "")).rpartition(".")
    cls = getattr(models, name, None) if module == models.__name__ else None
    return bool(getattr(cls, "videos", True))


def _refuse_videos(cfg: DictConfig, bench: Benchmark) -> None:
    target = str(cfg.model.get("_target_"))
    stock = " (a stock LlavaForConditionalGeneration)" if target.endswith(".HFLlavaModel") else ""
    raise ConfigError(
        f"benchmark={bench.name} has videos, and model._target_={target}{stock} has no video path: evaluate videos "
        "with a dc checkpoint (ckpt_path=...)"
    )


def run_benchmark(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """`python eval.py ...`: answers, result JSON + markdown table (rank 0), metrics on every rank."""
    started = time.perf_counter()
    check_interpolations(cfg)
    check_options(cfg)
    fabric = make_fabric(cfg.runtime)
    fabric.launch()
    bench = _benchmark(cfg)
    records, skips = bench.load()  # a missing benchmark file is named before minutes of model loading
    default_frames = config_number((cfg.get("video") or {}).get("num_frames", 8), "video.num_frames", int)
    frames = [video_frames(r, default_frames) for r in records if getattr(r, "video", None) is not None]
    if frames and not _model_class_takes_videos(cfg):
        _refuse_videos(cfg, bench)
    model = build_model(cfg, fabric.device)
    if frames and not model.videos:  # a model class of the user's own
        _refuse_videos(cfg, bench)
    if frames and hasattr(model, "check_video_fits"):
        model.check_video_fits(max(frames))  # refuse before answering anything
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    videos = bool(frames)
    answers, run_skips = run_pass(fabric, model, cfg, bench, records, out_dir, None, videos)
    skips = [*skips, *run_skips]
    skipped = {s.id for s in run_skips}
    kept = [r for r in records if r.id not in skipped]
    result = bench.score(kept, answers, skips)
    for control in bench.controls:
        control_records = bench.control_records(control, kept, out_dir)
        control_answers, control_skips = run_pass(fabric, model, cfg, bench, control_records, out_dir, control, videos)
        control_result = bench.score(control_records, control_answers, control_skips)
        result["metrics"].update({f"{control}_{k}": v for k, v in control_result["metrics"].items()})
    metrics = {f"{bench.name}/{k}": v for k, v in flatten_metrics(result).items()}
    if fabric.global_rank == 0:
        bench.write_submission(kept, answers, out_dir)
        meta = {
            **model.describe(),
            "benchmark": bench.name,
            "world_size": fabric.world_size,
            "device": str(fabric.device),
            "dtype": model.fingerprint().get("dtype"),
        }
        write_report({bench.name: result}, out_dir, stem=f"{bench.name}_results", meta=meta)
        counts = Counter(s.reason for s in skips)
        report(bench.summary(result))
        report(
            f"{bench.name}: {len(kept)} questions answered, skipped {dict(counts) or 0}, "
            f"{time.perf_counter() - started:.0f} s on {fabric.world_size} x {fabric.device.type}; "
            f"answers and results in {out_dir}"
        )
    return metrics, {"model": model, "result": result, "answers": answers, "fabric": fabric}
