"""`train(cfg)` and `evaluate(cfg)`: plain functions behind `train.py` / `eval.py`, callable from tests.

Both return `(metrics, objects)`: a dict of floats and a dict of the objects built (trainer, module, ...).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from dc.data.visual import build_visual_processor
from dc.lit_module import DCModule, model_config
from dc.models.llms.tokenizers import load_tokenizer
from dc.training.callbacks import loss_progress_bar
from dc.training.checkpoint import (
    check_resume,
    check_resume_world_size,
    checkpoint_hparams,
    resolve_ckpt_path,
    verify_archive,
)
from dc.training.checkpoint_io import DirectCheckpointIO, clean_partial_files
from dc.training.data import ResumableDataModule
from dc.training.loggers import build_loggers, finish_wandb, restore_csv_metrics
from dc.utils.cli import report
from dc.utils.errors import ConfigError, check_interpolations
from dc.utils.instantiate import instantiate, trusted_prefixes

log = logging.getLogger(__name__)


def build_tokenizer(cfg: DictConfig) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer, loaded once for the model and the data."""
    llm = cfg.llm
    source = llm.get("tokenizer")
    if source is None:
        source, key = llm.get("pretrained"), "llm.pretrained"
        if source is None:
            raise ConfigError("llm.tokenizer must be set when llm.pretrained is null")
    else:
        key = "llm.tokenizer"
        if hasattr(source, "get") and source.get("_target_"):
            source = instantiate(source, allowed=trusted_prefixes(cfg.get("extra_target_prefixes")))
    return load_tokenizer(source, llm.get("pad_token"), key=key)


def build_datamodule(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> L.LightningDataModule:
    """The `data` config bound to the model's tokenizer, the stage's template and the visual processor."""
    allowed = trusted_prefixes(cfg.get("extra_target_prefixes"))
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg)
    template = instantiate(cfg.stage.template if cfg.stage.get("template") else cfg.llm.template, allowed=allowed)
    visual = build_visual_processor(cfg, allowed=allowed)
    return instantiate(cfg.data, allowed=allowed)(tokenizer=tokenizer, template=template, visual=visual)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_scalars(cfg: DictConfig) -> None:
    """The run's plain numbers and choices have the right types and ranges (a typo such as `trainer.max_steps=abc`
    would otherwise surface as a type error deep inside Lightning, naming no key).

    Raises:
        ConfigError: naming the key, its value and what is expected.
    """
    from dc.models.visual.single import check_aspect

    def refuse(key: str, value: Any, expected: str) -> None:
        raise ConfigError(f"{key}={value!r}: expected {expected}")

    seed = cfg.get("seed")
    if isinstance(seed, bool) or not (isinstance(seed, int) or (isinstance(seed, str) and seed.strip().isdigit())):
        refuse("seed", seed, "an integer")
    trainer = cfg.get("trainer") or {}
    steps, epochs = trainer.get("max_steps"), trainer.get("max_epochs")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < -1:
        refuse("trainer.max_steps", steps, "an integer (-1: no limit)")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < -1):
        refuse("trainer.max_epochs", epochs, "an integer (-1 or null: no limit)")
    stage = cfg.get("stage") or {}
    if not _number(stage.get("lr")) or stage.get("lr") < 0:
        refuse("stage.lr", stage.get("lr"), "a non-negative number")
    connector_lr = stage.get("connector_lr")
    if connector_lr is not None and (not _number(connector_lr) or connector_lr < 0):
        refuse("stage.connector_lr", connector_lr, "a non-negative number or null")
    for key in ("weight_decay", "warmup_ratio"):
        if key in stage and (not _number(stage.get(key)) or stage.get(key) < 0):
            refuse(f"stage.{key}", stage.get(key), "a non-negative number")
    if "image_aspect" in stage:
        check_aspect(stage.get("image_aspect"), "stage.image_aspect")
    data = cfg.get("data") or {}
    length = data.get("max_length", 1)
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        refuse("data.max_length", length, "a positive integer (tokens per sample after visual-token expansion)")
    fraction = data.get("val_fraction", 0.0)
    if not _number(fraction) or not 0 <= fraction < 1:
        refuse("data.val_fraction", fraction, "a number in [0, 1)")


def validate(cfg: DictConfig) -> None:
    """Every check that needs no weights, data or network, before anything is downloaded or read.

    Layer indices and groups against the encoder's layout (the connector built on the meta device), the image mode,
    batch sizes, and the files the stage names.

    Raises:
        ConfigError: naming the key (and the allowed values).
    """
    from dc.models.builder import build_connector, build_image_mode, encoder_layout
    from dc.models.llms.hf_causal import HFCausalLM, check_llm_node
    from dc.training.lora import check_lora_settings
    from dc.training.optim import check_optimizer_impl

    allowed = trusted_prefixes(cfg.get("extra_target_prefixes"))
    try:
        build_connector(cfg, device="meta", allowed=allowed)
        mode = build_image_mode(cfg, allowed)
        if hasattr(mode, "candidates"):  # AnyRes: its resolutions against the encoder's input side
            mode.candidates(encoder_layout(cfg.encoder).input_size)
        batch = _positive_int(cfg.data.get("batch_size"), "data.batch_size")
        global_batch = _positive_int(cfg.stage.get("global_batch_size"), "stage.global_batch_size")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    accumulation(global_batch, batch, _configured_world_size(cfg.get("trainer") or {}))
    if str(cfg.llm.get("_target_")) == f"{HFCausalLM.__module__}.{HFCausalLM.__qualname__}":
        check_llm_node(cfg.llm)
    check_optimizer_impl(cfg.stage.get("optimizer_impl", "auto"))
    _check_strategy((cfg.get("trainer") or {}).get("strategy"))
    if cfg.stage.get("lora"):
        check_lora_settings(cfg.stage.lora)
    init = cfg.stage.get("init_connector_from")
    if init and not Path(init).is_file():
        raise FileNotFoundError(f"stage.init_connector_from={init}: no such file (a stage-1 dc checkpoint)")
    _check_data_files(cfg.get("data") or {})


def _check_strategy(node: Any) -> None:
    """The plain settings of dc's FSDP strategies (sharding, dtypes, checkpoint layout), checked before the loggers,
    the data and the trainer are built.
    """
    from dc.training.fsdp import VLMFSDPStrategy
    from dc.training.fsdp2 import VLMFSDP2Strategy

    if not hasattr(node, "get"):
        return
    for cls in (VLMFSDPStrategy, VLMFSDP2Strategy):
        if node.get("_target_") == f"{cls.__module__}.{cls.__qualname__}":
            cls.check_settings(**{str(k): v for k, v in node.items() if not str(k).startswith("_")})


def _check_data_files(data: DictConfig) -> None:
    """JSON data that no `data.prepare` generates must be there before any model is built."""
    prepare = data.get("prepare")
    if data.get("format", "json") != "json" or (prepare is not None and prepare.get("_target_")):
        return
    hint = "set DATA_ROOT (or paths.data_dir) to where the datasets live, or the key itself; layout: docs/data.md"
    train_file = data.get("train_file")
    if train_file and not Path(train_file).is_file():
        raise FileNotFoundError(f"data.train_file={train_file}: no such file ({hint})")
    image_folder = data.get("image_folder")
    if image_folder and not Path(image_folder).is_dir():
        raise FileNotFoundError(f"data.image_folder={image_folder}: no such folder ({hint})")


def _configured_world_size(trainer: Any) -> int:
    """`trainer.devices` × `trainer.num_nodes` where both are plain numbers, else 1 (only a lower bound is known
    before Lightning resolves "auto" or a device list; the trainer's own world size is checked again later).
    """
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    plain = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (devices, nodes))
    return int(devices) * int(nodes) if plain else 1


def accumulation(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Gradient-accumulation steps giving `global_batch` from `world_size` devices × `micro_batch`."""
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise ConfigError(
            f"stage.global_batch_size={global_batch} is not a multiple of data.batch_size={micro_batch} × "
            f"{world_size} devices; choose a per-device batch that divides it"
        )
    return global_batch // per_step


def schedule_steps(trainer: L.Trainer, batches_per_epoch: int) -> int:
    """Optimizer steps of the whole run, as Lightning will take them, computed before `fit` touches any loader.

    Lightning steps the optimizer every `accumulate_grad_batches` batches and at the end of every epoch, so an
    epoch takes ceil(batches / accumulation) steps; `max_steps` (when set) caps the total. Computing this here
    instead of asking `trainer.estimated_stepping_batches` inside `configure_optimizers` matters on resume: that
    property builds the train loader before the checkpoint's loop state is restored, so the saved data position
    would never reach it.
    """
    per_epoch = math.ceil(batches_per_epoch / trainer.accumulate_grad_batches)
    by_epochs = per_epoch * trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
    by_steps = trainer.max_steps if trainer.max_steps not in (None, -1) else None
    candidates = [n for n in (by_epochs, by_steps) if n is not None]
    if not candidates:
        raise ValueError("set trainer.max_epochs or trainer.max_steps (the LR schedule needs the run's length)")
    return max(1, min(candidates))


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says everything a user needs: the entry points print it alone, without a traceback."""
    from dc.data.records import BadDataError
    from dc.eval.parallel import StaleAnswersError
    from dc.models.hub import PretrainedNotFoundError
    from dc.training.checkpoint import NotACheckpointError, ResumeConfigError, UnsafeCheckpointError
    from dc.utils.instantiate import UntrustedTargetError

    return (
        BadDataError,
        ConfigError,
        PretrainedNotFoundError,
        UnsafeCheckpointError,
        NotACheckpointError,
        ResumeConfigError,
        StaleAnswersError,
        UntrustedTargetError,
        FileNotFoundError,
    )


def optimized_metric(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """`metrics[cfg.optimized_metric]` (what train.py / eval.py return to a Hydra sweeper); None when unset.

    Raises:
        ConfigError: the named metric was not produced (the message lists the ones that were; none when the run
            trained or answered nothing).
    """
    key = cfg.get("optimized_metric")
    if key is None:
        return None
    if key not in metrics:
        raise ConfigError(f"optimized_metric={key!r} is not among this run's metrics: {sorted(metrics)}")
    return float(metrics[key])


def _float_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        value = float(v.item() if isinstance(v, torch.Tensor) else v)
        if math.isfinite(value):
            out[k] = value
    return out


class _FitStart(L.Callback):
    """Records the global step at which `fit` began training (None: `fit` had nothing to do)."""

    def __init__(self) -> None:
        self.step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.step = trainer.global_step


def _earlier_metrics(path: Path) -> dict[str, float]:
    """The numbers of an earlier `metrics.json` (a run re-entered with nothing left to train keeps them)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Train one stage as configured; return final metrics and the trainer/module/datamodule.

    The train loader is wrapped for exact mid-epoch resume (`dc.training.data`); `ckpt_path` may be a path,
    `last` (this run folder's `checkpoints/last.ckpt`) or `auto` (that file if present). The wandb run, if any,
    is finished even when training raises, so the next job of a multirun gets its own run.
    """
    check_interpolations(cfg)
    check_scalars(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_node = (cfg.get("callbacks") or {}).get("checkpoint") or {}
    checkpoint_dir = checkpoint_node.get("dirpath") or output_dir / "checkpoints"
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), checkpoint_dir)
    allowed = trusted_prefixes(cfg.get("extra_target_prefixes"))
    validate(cfg)
    clean_partial_files(checkpoint_dir)
    failed = True
    kept_csv: list[Path] = []
    try:
        tokenizer = build_tokenizer(cfg)
        datamodule = build_datamodule(cfg, tokenizer)
        loggers = build_loggers(cfg, resuming=ckpt_path is not None, kept=kept_csv)
        callbacks = [instantiate(cb, allowed=allowed) for cb in (cfg.get("callbacks") or {}).values() if cb is not None]
        if not loggers:  # Lightning refuses a LearningRateMonitor without a logger (logger=[])
            callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
        bar = loss_progress_bar(callbacks) if cfg.trainer.get("enable_progress_bar", True) else None
        callbacks += [bar] if bar is not None else []  # the loss on the bar without a device sync per batch
        fit_start = _FitStart()
        callbacks.append(fit_start)
        trainer: L.Trainer = instantiate(
            cfg.trainer, allowed=allowed, logger=loggers or False, callbacks=callbacks, plugins=[DirectCheckpointIO()]
        )
        trainer.accumulate_grad_batches = accumulation(
            int(cfg.stage.global_batch_size), int(cfg.data.batch_size), trainer.world_size
        )
        if ckpt_path is not None:  # before the model is built (minutes at 7B)
            check_resume_world_size(ckpt_path, trainer.world_size)
        total_steps = schedule_steps(trainer, datamodule.train_batches(trainer.world_size))
        module = DCModule(model_config(cfg), cfg.stage, int(cfg.seed), tokenizer=tokenizer, total_steps=total_steps)
        log.info(
            "global batch %d = %d devices × %d per device × %d accumulation",
            cfg.stage.global_batch_size,
            trainer.world_size,
            cfg.data.batch_size,
            trainer.accumulate_grad_batches,
        )
        if ckpt_path is not None:  # before Lightning reads it: FSDP2 loads the weights before any module hook runs
            if Path(ckpt_path).is_file():  # every strategy (FSDP ones bypass the checkpoint IO plugin)
                verify_archive(ckpt_path)
            check_resume(checkpoint_hparams(ckpt_path), module.hparams, ckpt_path)
        trainer.fit(module, datamodule=ResumableDataModule(datamodule, seed=int(cfg.seed)), ckpt_path=ckpt_path)
        metrics = _float_metrics(trainer.callback_metrics)
        metrics_file = output_dir / "metrics.json"
        # nothing trained: `fit` returned at once, or began and stopped at once (a checkpoint taken after an
        # epoch's last batch, the epoch then completed on restore)
        if fit_start.step in (None, trainer.global_step) and ckpt_path is not None:
            # re-entered a finished run (a requeued job, `ckpt_path=auto`): keep what the run reported before
            metrics = {**_earlier_metrics(metrics_file), **metrics}
            if trainer.is_global_zero:
                report(
                    f"nothing to train: {ckpt_path} is at step {trainer.global_step}, epoch {trainer.current_epoch} "
                    f"(trainer.max_steps={cfg.trainer.get('max_steps')}, trainer.max_epochs="
                    f"{cfg.trainer.get('max_epochs')}); raise one of them to train on"
                )
        ckpt_cb = trainer.checkpoint_callback
        if ckpt_cb is not None and trainer.is_global_zero:
            last = Path(ckpt_cb.dirpath) / "last.ckpt" if ckpt_cb.dirpath else None
            last = last if last is not None and last.exists() else None  # none written: no training batch
            metrics_file.write_text(json.dumps({**metrics, "last_ckpt": str(last) if last else None}, indent=2))
            if last is not None:
                report(f"checkpoint: {last}  (step {trainer.global_step}; metrics in {metrics_file})")
        failed = False
    finally:
        finish_wandb(failed)
        if failed:  # a refused resume logged nothing: its earlier metrics.csv keeps its name
            restore_csv_metrics(kept_csv)
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule}


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Evaluate a checkpoint on the configured benchmark (`benchmark` config node).

    With `wandb.enabled=true` the metrics also go to a Weights & Biases run (job type "eval"; offline when no
    API key is configured), which is finished even when the evaluation fails.
    """
    from dc.eval.runner import run_benchmark

    wandb_cfg = cfg.get("wandb") or {}
    if not wandb_cfg.get("enabled", False):
        return run_benchmark(cfg)
    import wandb

    from dc.training.loggers import wandb_mode

    run = wandb.init(
        project=wandb_cfg.get("project", "dense-connector"),
        group=wandb_cfg.get("group"),
        name=str(cfg.run_name),
        job_type="eval",
        dir=str(cfg.paths.output_dir),
        config=OmegaConf.to_container(cfg, resolve=True),
        mode=wandb_mode(),
    )
    failed = True
    try:
        metrics, objects = run_benchmark(cfg)
        run.log(metrics)
        run.summary.update(metrics)
        objects["wandb_summary"] = dict(run.summary)  # as the run holds it (cleared once finished)
        objects["wandb_dir"] = run.dir
        failed = False
        return metrics, objects
    finally:
        run.finish(exit_code=1 if failed else 0)
