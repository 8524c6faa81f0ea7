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

and in each step's folder `settings.json`: what the step's result was made with (`step_settings`). `fields` are
the flat sweep choices (connector, encoder, llm, layers/groups, downsample, seed, visual_tokens, ...) and `metrics`
the benchmarks' flat `<benchmark>/<metric>` values; `overrides` are those of the run that made the results.

Running the same command in the same folder again (a requeued SLURM job, `hydra.sweep.dir=<same>`) skips finished
work: a stage with `metrics.json` is done, an unfinished one resumes from its `last.ckpt`, a benchmark with a
results file is read back. A run whose settings differ from those a step was made with is refused before anything
runs, naming the changed keys (keys that only say how a step runs, `RUNTIME_KEYS`, may change); `overwrite=true`
re-does the stale steps and those that depend on them instead. Under several ranks (SLURM, torchrun) every rank
trains; rank 0 alone evaluates and writes `point.json` and the `settings.json` files.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from dc.eval.benchmarks.report import atomic_write_json, flatten_metrics
from dc.models.builder import build_connector
from dc.pipeline import evaluate, train, user_errors
from dc.training.checkpoint import RUNTIME_KEYS as MODEL_RUNTIME_KEYS
from dc.training.checkpoint import under
from dc.training.loggers import hydra_choices, is_rank_zero, run_fields
from dc.utils.cli import errors_as_messages
from dc.utils.errors import ConfigError, check_interpolations
from dc.utils.instantiate import instantiate, trusted_prefixes

log = logging.getLogger(__name__)

STEPS = ("pretrain", "finetune")
RECIPE_KEYS = ("prepare", "pretrain", "finetune", "benchmarks", "eval", "limit", "overwrite")
POINT_FILE = "point.json"
SETTINGS_FILE = "settings.json"  # in each step's folder: {"settings": what its result was made with}
# A step's settings hold `made_from.<step>`: the digest of the settings of the step whose result it was made from
# (stage 2 from stage 1, a benchmark from stage 2), so a redo of stage 1 cut short before stage 2 was redone still
# finds stage 2 stale on the next run, and so on down the chain.
FROM_KEY = "made_from"

# Keys of a stage's or benchmark's config that say how it runs, not what it produces: a re-run of a point may change
# them, and `collect` does not tell points apart by them. The model's are those a resume may change (speed and
# memory options), less the ones that say which weights are loaded and their dtype (which changes the numbers).
RUNTIME_KEYS = (
    "logger",
    "wandb",
    "overwrite",
    "extra_target_prefixes",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.prefetch_factor",
    "callbacks.checkpoint",  # dc's callbacks observe a run (checkpoints, logs, progress); one a user adds may not
    "callbacks.rng_state",
    "callbacks.lr_monitor",
    "callbacks.throughput",
    "callbacks.predictions",
    "callbacks.data_stats",
    "callbacks.progress",
    "batch_size",  # a benchmark's questions per forward pass (`eval.batch_size`)
    "runtime.accelerator",
    "runtime.devices",
    "runtime.num_nodes",
    *(k for k in MODEL_RUNTIME_KEYS if not k.endswith(("pretrained", "pretrained_file", "tokenizer", "dtype"))),
)
# Keys added to the configs after sweeps had recorded settings, with the value the code used before they existed:
# left out of the settings at that value, so a folder recorded earlier stays current (set otherwise, they count).
ADDED_KEYS: dict[str, Any] = {"data.strict": False, "data.overlength": "truncate"}
# Keys a step's settings leave out because other recorded values stand for them: folders (what is read from them
# is recorded: data files, the encoder), the run's name, and the checkpoint a step starts from (the settings of the
# step that made it).
DERIVED_KEYS = (
    "paths",
    "run_name",
    "ckpt_path",
    "model.ckpt_path",
    "stage.init_connector_from",
    "trainer.default_root_dir",
)


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
    try:
        check_interpolations(node)  # an unset ${oc.env:...} named by key, not a traceback from resolve
    except ConfigError as exc:
        raise ConfigError(f"{step}: {exc}") from None
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


def is_runtime_override(override: str) -> bool:
    """Whether a command-line override of the recipe (`pretrain.trainer.enable_progress_bar=false`,
    `eval.batch_size=8`, `overwrite=true`) only changes how its steps run (`RUNTIME_KEYS`).
    """
    key = override.partition("=")[0].lstrip("+~")
    for prefix in (*STEPS, "eval"):
        key = key.removeprefix(prefix + ".")
    return under(key, RUNTIME_KEYS)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping) and node:
        return {
            k: v for key, child in node.items() for k, v in _flat(child, f"{prefix}.{key}" if prefix else key).items()
        }
    return {prefix: node}


def _recorded(node: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A step's config as its settings: flat dotted keys, resolved, without `RUNTIME_KEYS` and `DERIVED_KEYS`,
    as `settings.json` gives them back (tuples as lists).
    """
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    flat = {
        k: v
        for k, v in _flat(plain).items()
        if not under(k, RUNTIME_KEYS + DERIVED_KEYS) and not (k in ADDED_KEYS and v == ADDED_KEYS[k])
    }
    return json.loads(json.dumps(flat, default=str))


def step_settings(cfg: DictConfig, job_dir: Path) -> dict[str, dict[str, Any]]:
    """What determines each step's result, by the step's folder in `job_dir` (`pretrain`, `finetune`,
    `eval/<name>`), in the order they run: the step's resolved config (`_recorded`); the first stage's also holds
    the `prepare` nodes (what they make feeds it); a later step's hold `made_from.<step>`, the digest of the
    settings of the step whose result it starts from.
    """
    prepare = _recorded({"prepare": OmegaConf.to_container(cfg.prepare, resolve=True)}) if cfg.get("prepare") else {}
    out: dict[str, dict[str, Any]] = {}
    init_from: Path | None = None
    previous: str | None = None
    for step in STEPS:
        made_from = {f"{FROM_KEY}.{previous}": digest(out[previous])} if previous else prepare
        out[step] = {**made_from, **_recorded(stage_config(cfg, step, job_dir / step, init_from))}
        init_from, previous = job_dir / step / "checkpoints" / "last.ckpt", step
    made_from = {f"{FROM_KEY}.{previous}": digest(out[previous])}
    for name in benchmark_names(cfg):
        out[f"eval/{name}"] = {
            **made_from,
            **_recorded(benchmark_config(cfg, name, init_from, job_dir / "eval" / name)),
        }
    return out


def digest(settings: Mapping[str, Any]) -> str:
    """A short fingerprint of a step's settings, recorded by the steps made from its result (`FROM_KEY`)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _has_results(folder: Path, step: str) -> bool:
    """A stage with a checkpoint or final metrics; a benchmark with any file (answers, results)."""
    if step in STEPS:
        return (folder / "metrics.json").exists() or (folder / "checkpoints" / "last.ckpt").exists()
    return folder.is_dir() and any(p.name != SETTINGS_FILE for p in folder.iterdir())


def _made_with(folder: Path) -> dict[str, Any] | None:
    path = folder / SETTINGS_FILE
    return json.loads(path.read_text())["settings"] if path.exists() else None


def _changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """`key: before -> now` for every key whose value differs (or that one side lacks)."""

    def show(values: Mapping[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "unset"

    keys = sorted(k for k in before.keys() | now.keys() if k not in before or k not in now or before[k] != now[k])
    return [f"{k}: {show(before, k)} -> {show(now, k)}" for k in keys]


def stale_steps(job_dir: Path, settings: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], dict[str, list[str]]]:
    """The steps of the point in `job_dir` whose results were made with other settings than `settings`
    (`step_settings`), with the steps after them that used those results; and what changed, per step.

    A step made before the recipe recorded settings (no `settings.json`) is taken as made with these settings,
    with a warning. (Every rank decides from the files alone, before any of them writes: the ranks agree.)

    Returns:
        (stale steps in run order, {step: ["key: before -> now", ...]}).
    """
    stale: list[str] = []
    changes: dict[str, list[str]] = {}
    upstream = False  # a stage before this step is stale: this step was made from what will be replaced
    for step, now in settings.items():
        folder = job_dir / step
        if not _has_results(folder, step):
            continue
        made = _made_with(folder)
        diff = _changes(made, now) if made is not None else []
        if diff:
            changes[step] = diff
        if made is None:
            log.warning("%s: made before the recipe recorded settings; reused as made with this run's", folder)
        if diff or upstream:
            stale.append(step)
            upstream = upstream or step in STEPS
    return stale, changes


def _refusal(job_dir: Path, stale: Sequence[str], changes: Mapping[str, Sequence[str]], flag: str) -> str:
    parts = []
    for step, lines in changes.items():
        shown = ", ".join(lines[:6]) + (f", and {len(lines) - 6} more" if len(lines) > 6 else "")
        parts.append(f"{step} ({shown})")
    return (
        f"{job_dir} holds results made with other settings than this run's: {'; '.join(parts)}. Run it in another "
        f"folder (hydra.sweep.dir=... for a sweep, hydra.run.dir=... for one point), or add {flag} to redo "
        f"{', '.join(stale)} with these settings"
    )


def _write_settings(folder: Path, settings: Mapping[str, Any]) -> None:
    if is_rank_zero():
        atomic_write_json(folder / SETTINGS_FILE, {"settings": dict(settings)})


def _stage(
    cfg: DictConfig, step: str, out_dir: Path, init_from: Path | None, settings: Mapping[str, Any], redo: bool
) -> dict[str, Any]:
    done = out_dir / "metrics.json"
    if done.exists() and not redo:  # finished in an earlier attempt of this point
        log.info("%s: already done (%s)", step, done)
        metrics = json.loads(done.read_text())
    else:
        node = stage_config(cfg, step, out_dir, init_from)
        if redo:
            # made with other settings: start over, replacing its files as it goes (every rank decided the same
            # from the files as they were; none is removed while another rank may still read them). Its
            # settings.json changes once it is done: a redo cut short is found stale again and started over.
            node.ckpt_path = None
        elif not _has_results(out_dir, step):
            _write_settings(out_dir, settings)
        metrics, _ = train(node)
        if redo:
            _write_settings(out_dir, settings)
    return {"dir": str(out_dir), "last_ckpt": str(out_dir / "checkpoints" / "last.ckpt"), "metrics": metrics}


def _benchmark(
    cfg: DictConfig, name: str, ckpt: Path, out_dir: Path, settings: Mapping[str, Any], redo: bool
) -> dict[str, float]:
    if redo and out_dir.exists():  # scored on another model or with other settings (rank 0 alone evaluates)
        shutil.rmtree(out_dir)
    finished = sorted(out_dir.glob("*_results.json"))
    if finished:  # scored in an earlier attempt of this point
        metrics: dict[str, float] = {}
        for path in finished:
            for bench, result in json.loads(path.read_text())["results"].items():
                metrics.update({f"{bench}/{k}": v for k, v in flatten_metrics(result).items()})
        return metrics
    if not _has_results(out_dir, f"eval/{name}"):
        _write_settings(out_dir, settings)
    metrics, _ = evaluate(benchmark_config(cfg, name, ckpt, out_dir))
    return metrics


def _add_wall(record: dict[str, Any], key: str, start: float) -> None:
    record["wall_s"][key] = round(record["wall_s"].get(key, 0.0) + time.perf_counter() - start, 1)


def _prepare(cfg: DictConfig, allowed: Any, record: dict[str, Any]) -> None:
    """Call each `prepare` node. A node with an `out` whose call returns the folder it made gets `out` set to that
    folder, absolute: the stages' `${prepare.<name>.out}` then name it (in their checkpoints too) from anywhere.
    """
    for name, node in (cfg.get("prepare") or {}).items():
        start = time.perf_counter()
        made = instantiate(node, allowed=allowed)
        if "out" in node and isinstance(made, (str, os.PathLike)):
            cfg.prepare[name].out = str(Path(made).resolve())
        _add_wall(record, f"prepare/{name}", start)


def run_point(cfg: DictConfig) -> dict[str, Any]:
    """Run the recipe for the point `cfg` describes, in `cfg.paths.output_dir`; return its `point.json` record.

    A point folder holding results made with other settings is refused before anything runs (`ConfigError`,
    `point.json` left as it is), unless `overwrite` is set: then the stale steps are redone. A failure is recorded
    (`status: failed`, `error`) and re-raised, so the launcher sees it and `collect` reports the point as failed.
    """
    cfg = copy.deepcopy(cfg)  # `_prepare` pins the prepared folders in it
    job_dir = Path(cfg.paths.output_dir)
    overrides = task_overrides()
    settings = step_settings(cfg, job_dir)
    stale, changes = stale_steps(job_dir, settings)
    if changes and not cfg.get("overwrite"):
        flag = "overwrite=true" if "overwrite" in cfg else "+overwrite=true"
        raise ConfigError(_refusal(job_dir, stale, changes, flag))
    if stale:
        log.info("redoing %s (overwrite=true): made with other settings", ", ".join(stale))
    job_dir.mkdir(parents=True, exist_ok=True)
    earlier = job_dir / POINT_FILE
    # seconds per step summed over every attempt of this point (a requeued point keeps what it spent before)
    wall_s = json.loads(earlier.read_text()).get("wall_s", {}) if earlier.exists() else {}
    record: dict[str, Any] = {
        "status": "running",
        "fields": {},
        "metrics": {},
        "overrides": overrides,
        "steps": {},
        "wall_s": {k: v for k, v in wall_s.items() if k not in stale},
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
        _prepare(cfg, allowed, record)
        init_from: Path | None = None
        for step in STEPS:
            start = time.perf_counter()
            record["steps"][step] = _stage(cfg, step, job_dir / step, init_from, settings[step], step in stale)
            _add_wall(record, step, start)
            init_from = Path(record["steps"][step]["last_ckpt"])
            save()
        if not write:  # other ranks are done once training is
            return record
        for name in benchmark_names(cfg):
            start = time.perf_counter()
            step = f"eval/{name}"
            out_dir = job_dir / step
            record["metrics"].update(_benchmark(cfg, name, init_from, out_dir, settings[step], step in stale))
            _add_wall(record, step, start)
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
    """Hydra entry point: run one point; return its first metric (what a sweeper would optimise).

    One point (no `-m`): a mistake prints one line (`error: ...`), no traceback. In a sweep it prints the same line
    and stays an exception, which Hydra records for that point while the other points still run.
    """
    with errors_as_messages(user_errors()):
        record = run_point(cfg)
    return next(iter(record["metrics"].values()), None)


if __name__ == "__main__":
    main()
