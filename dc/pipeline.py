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
from omegaconf import DictConfig, OmegaConf

from dc.data.image import ImagePreprocessor
from dc.lit_module import DCModule
from dc.models.builder import build_connector
from dc.models.llms.hf_causal import load_tokenizer
from dc.models.llms.templates import get_template
from dc.utils.instantiate import instantiate

log = logging.getLogger(__name__)


def template_name(cfg: DictConfig) -> str:
    """The stage's template (stage 1: plain) or else the LLM's own."""
    return cfg.stage.get("template") or cfg.llm.template


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The `data` config bound to the model's tokenizer, template, image processor and visual-token count."""
    tokenizer = load_tokenizer(cfg.llm.tokenizer or cfg.llm.pretrained, cfg.llm.get("pad_token"))
    images = ImagePreprocessor(instantiate(cfg.encoder.image), aspect=cfg.stage.image_aspect)
    num_visual_tokens = build_connector(cfg).num_visual_tokens()
    return instantiate(cfg.data, _convert_="all")(
        tokenizer=tokenizer,
        template=get_template(template_name(cfg)),
        image_processor=images,
        num_visual_tokens=num_visual_tokens,
    )


def accumulation(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Gradient-accumulation steps giving `global_batch` from `world_size` devices × `micro_batch`."""
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise ValueError(
            f"stage.global_batch_size={global_batch} is not a multiple of data.batch_size={micro_batch} × "
            f"{world_size} devices; choose a per-device batch that divides it"
        )
    return global_batch // per_step


def _float_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        value = float(v.item() if isinstance(v, torch.Tensor) else v)
        if math.isfinite(value):
            out[k] = value
    return out


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Train one stage as configured; return final metrics and the trainer/module/datamodule."""
    L.seed_everything(int(cfg.seed), workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(cfg)
    module = DCModule(cfg)
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    callbacks = [instantiate(cb) for cb in (cfg.get("callbacks") or {}).values() if cb is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    trainer.accumulate_grad_batches = accumulation(
        int(cfg.stage.global_batch_size), int(cfg.data.batch_size), trainer.world_size
    )
    log.info("global batch %d = %d devices × %d per device × %d accumulation", cfg.stage.global_batch_size,
             trainer.world_size, cfg.data.batch_size, trainer.accumulate_grad_batches)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = _float_metrics(trainer.callback_metrics)
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None and trainer.is_global_zero:
        last = Path(ckpt_cb.dirpath) / "last.ckpt" if ckpt_cb.dirpath else None
        metrics_file = output_dir / "metrics.json"
        metrics_file.write_text(json.dumps({**metrics, "last_ckpt": str(last) if last else None}, indent=2))
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule}


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Evaluate a checkpoint on the configured benchmark; see `dc.eval.synthetic`."""
    from dc.eval.synthetic import evaluate_synthetic

    return evaluate_synthetic(cfg)


def resolved(cfg: DictConfig) -> DictConfig:
    """A fully resolved copy of `cfg` (interpolations replaced by values)."""
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
