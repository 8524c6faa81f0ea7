"""One sweep point of a paper table: stage 1 → stage 2 (from this point's own stage-1 connector) → benchmarks.

    python -m dc.experiments.recipe -m experiment=table1_layers     # the sweep written in the experiment file
    python -m dc.experiments.recipe connector=sci seed=2            # one point

The root config is `configs/recipe.yaml`: the model groups shared by both stages, a `pretrain` and a `finetune`
patch merged over it for each stage, `benchmarks` (name -> benchmark node) and `prepare` (name -> node called
first, e.g. the proxy-encoder pretraining). A point's folder (the Hydra job dir) holds::

    pretrain/                 stage 1 run (checkpoints/last.ckpt, metrics.json, csv/ or wandb/)
    finetune/                 stage 2 run, stage.init_connector_from = pretrain/checkpoints/last.ckpt
    eval/<name>/              <benchmark>_results.json, answers
    point.json                {"status", "fields", "metrics", "overrides", "steps", "wall_s", "error"}

`fields` are the flat sweep choices (connector, encoder, llm, layers/groups, downsample, seed, visual_tokens, ...)
and `metrics` the benchmarks' flat `<benchmark>/<metric>` values. Running the same command in the same folder
again (a requeued SLURM job, `hydra.sweep.dir=<same>`) skips finished work: a stage with `metrics.json` is done,
an unfinished one resumes from its `last.ckpt`, a benchmark with a results file is read back. Under several ranks
(SLURM, torchrun) every rank trains; rank 0 alone evaluates and writes `point.json`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from dc.eval.benchmarks.report import atomic_write_json, flatten_metrics
from dc.models.builder import build_connector
from dc.pipeline import evaluate, train
from dc.training.loggers import hydra_choices, is_rank_zero, run_fields
from dc.utils.instantiate import instantiate, trusted_prefixes

log = logging.getLogger(__name__)

STEPS = ("pretrain", "finetune")
RECIPE_KEYS = ("prepare", "pretrain", "finetune", "benchmarks", "eval", "limit")
POINT_FILE = "point.json"


def stage_config(cfg: DictConfig, step: str, out_dir: Path, init_from: Path | None = None) -> DictConfig:
    """The train config of one stage: the recipe config with its `step` patch merged in, fully resolved.

    Args:
        cfg: the recipe config.
        step: "pretrain" or "finetune".
        out_dir: the stage's run folder.
        init_from: stage-1 checkpoint the connector starts from (stage 2).
    """
    node = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # a non-struct copy, interpolations kept
    node = OmegaConf.merge(node, cfg[step] or {})
    if node.get("stage") is None:
        raise ValueError(f"{step}.stage is missing: the recipe config must select a stage for {step}")
    node.paths.output_dir = str(out_dir)
    node.run_name = f"{cfg.run_name}-{step}"
    node.ckpt_path = "auto"  # resume an interrupted stage in its own folder
    if init_from is not None:
        node.stage.init_connector_from = str(init_from)
    OmegaConf.resolve(node)  # pin values that point at recipe keys (prepare paths) before dropping them
    for key in RECIPE_KEYS:
        node.pop(key, None)
    return node


def benchmark_config(cfg: DictConfig, name: str, ckpt: Path, out_dir: Path) -> DictConfig:
    """The eval config (as `configs/eval.yaml` shapes it) for benchmark `name` of the recipe on `ckpt`."""
    if name not in benchmark_names(cfg):
        raise KeyError(f"benchmarks.{name}: not in the recipe (have {benchmark_names(cfg)})")
    paths = OmegaConf.to_container(cfg.paths, resolve=True)
    paths["output_dir"] = str(out_dir)
    return OmegaConf.create(
        {
            "benchmark": OmegaConf.to_container(cfg.benchmarks[name], resolve=True),
            "model": {
                "_target_": "dc.eval.models.DCModel",
                "_partial_": True,
                "ckpt_path": str(ckpt),
                "model_overrides": {},
            },
            "ckpt_path": str(ckpt),
            # rank 0 alone evaluates inside the point's job, on its own device (no second process launch)
            "runtime": {
                "accelerator": "auto",
                "devices": 1,
                "num_nodes": 1,
                "precision": str((cfg.get("eval") or {}).get("precision", "auto")),
            },
            "video": {"num_frames": 8, "aggregate": "pool"},
            "overwrite": False,
            "optimized_metric": None,
            "paths": paths,
            "limit": cfg.get("limit"),
            "batch_size": int(cfg.eval.batch_size),
            "image_aspect": str(cfg.eval.image_aspect),
            "run_name": f"{cfg.run_name}-{name}",
            "extra_target_prefixes": list(cfg.get("extra_target_prefixes") or []),
            "wandb": {"enabled": False},  # the point's metrics go to wandb once, with its flat fields
        }
    )


def benchmark_names(cfg: DictConfig) -> list[str]:
    """The recipe's benchmarks, in config order (an experiment removes an inherited one by setting it to null)."""
    return [name for name, node in (cfg.get("benchmarks") or {}).items() if node is not None]


def point_fields(cfg: DictConfig, stage_cfg: DictConfig) -> dict[str, Any]:
    """The flat fields of a point: `run_fields` of its last stage, the visual tokens per image, the experiment."""
    fields = run_fields(stage_cfg)
    fields["visual_tokens"] = build_connector(stage_cfg, device="meta").num_visual_tokens()
    experiment = hydra_choices().get("experiment")
    if experiment and experiment != "null":
        fields["experiment"] = experiment
    return fields


def task_overrides() -> list[str]:
    """This job's command-line overrides (sweep choices included), as Hydra recorded them."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _stage(cfg: DictConfig, step: str, out_dir: Path, init_from: Path | None) -> dict[str, Any]:
    done = out_dir / "metrics.json"
    if done.exists():  # finished in an earlier attempt of this point
        log.info("%s: already done (%s)", step, done)
        metrics = json.loads(done.read_text())
    else:
        metrics, _ = train(stage_config(cfg, step, out_dir, init_from))
    return {"dir": str(out_dir), "last_ckpt": str(out_dir / "checkpoints" / "last.ckpt"), "metrics": metrics}


def _benchmark(cfg: DictConfig, name: str, ckpt: Path, out_dir: Path) -> dict[str, float]:
    finished = sorted(out_dir.glob("*_results.json"))
    if finished:  # scored in an earlier attempt of this point
        metrics: dict[str, float] = {}
        for path in finished:
            for bench, result in json.loads(path.read_text())["results"].items():
                metrics.update({f"{bench}/{k}": v for k, v in flatten_metrics(result).items()})
        return metrics
    metrics, _ = evaluate(benchmark_config(cfg, name, ckpt, out_dir))
    return metrics


def _add_wall(record: dict[str, Any], key: str, start: float) -> None:
    record["wall_s"][key] = round(record["wall_s"].get(key, 0.0) + time.perf_counter() - start, 1)


def run_point(cfg: DictConfig) -> dict[str, Any]:
    """Run the recipe for the point `cfg` describes, in `cfg.paths.output_dir`; return its `point.json` record.

    A failure is recorded (`status: failed`, `error`) and re-raised, so the launcher sees it and `collect`
    reports the point as failed.
    """
    job_dir = Path(cfg.paths.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    earlier = job_dir / POINT_FILE
    record: dict[str, Any] = {
        "status": "running",
        "fields": {},
        "metrics": {},
        "overrides": task_overrides(),
        "steps": {},
        # seconds per step summed over every attempt of this point (a requeued point keeps what it spent before)
        "wall_s": json.loads(earlier.read_text()).get("wall_s", {}) if earlier.exists() else {},
        "error": None,
    }
    write = is_rank_zero()

    def save() -> None:
        if write:
            atomic_write_json(job_dir / POINT_FILE, record)

    allowed = trusted_prefixes(cfg.get("extra_target_prefixes"))
    try:
        record["fields"] = point_fields(cfg, stage_config(cfg, STEPS[-1], job_dir / STEPS[-1]))
        save()
        for name, node in (cfg.get("prepare") or {}).items():
            start = time.perf_counter()
            instantiate(node, allowed=allowed)
            _add_wall(record, f"prepare/{name}", start)
        init_from: Path | None = None
        for step in STEPS:
            start = time.perf_counter()
            record["steps"][step] = _stage(cfg, step, job_dir / step, init_from)
            _add_wall(record, step, start)
            init_from = Path(record["steps"][step]["last_ckpt"])
            save()
        if not write:  # other ranks are done once training is
            return record
        for name in benchmark_names(cfg):
            start = time.perf_counter()
            record["metrics"].update(_benchmark(cfg, name, init_from, job_dir / "eval" / name))
            _add_wall(record, f"eval/{name}", start)
            save()
        record["status"] = "ok"
    except BaseException as err:
        record["status"] = "failed"
        record["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        save()
    log_point_to_wandb(cfg, record)
    return record


def log_point_to_wandb(cfg: DictConfig, record: dict[str, Any]) -> None:
    """With a wandb logger configured, one run per point: flat fields as config, metrics as summary."""
    from dc.training.loggers import WANDB_TARGET

    nodes = [n for n in (cfg.get("logger") or {}).values() if n is not None and n.get("_target_") == WANDB_TARGET]
    if not nodes:
        return
    from dc.experiments.tracking import log_point

    log_point(nodes[0], Path(cfg.paths.output_dir), str(cfg.run_name), record)


@hydra.main(version_base="1.3", config_path="../../configs", config_name="recipe")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: run one point; return its first metric (what a sweeper would optimise)."""
    record = run_point(cfg)
    return next(iter(record["metrics"].values()), None)


if __name__ == "__main__":
    main()
