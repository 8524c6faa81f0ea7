"""The LightningModule: builds the VLM in `configure_model`, applies the stage, trains, checkpoints.

Training concerns only; the model itself is `dc.models.vlm.VLM`.

Checkpoints hold the weights that cannot be rebuilt from config: everything trainable, plus frozen parts that
were built with random weights (the tiny models). Frozen parts loaded from `pretrained` are left out and come
back from their source when the checkpoint is loaded (`load_vlm`).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from dc.models.builder import build_vlm
from dc.models.vlm import VLM
from dc.training.optim import param_groups, warmup_cosine
from dc.training.stages import apply_freezing, part_of

log = logging.getLogger(__name__)


def persisted_prefixes(cfg: DictConfig) -> list[str]:
    """State-dict prefixes a checkpoint must hold for `cfg` (the others reload from `pretrained`)."""
    train = set(cfg.stage.train)
    keep = ["vlm.connector."]
    if "encoder" in train or not cfg.encoder.model.get("pretrained"):
        keep.append("vlm.encoder.")
    if "llm" in train or not cfg.llm.get("pretrained"):
        keep.append("vlm.llm.")
    return keep


class DCModule(L.LightningModule):
    """Lightning wrapper around a `VLM` built from the `encoder`, `connector`, `llm` and `stage` configs."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        container = OmegaConf.to_container(cfg, resolve=True)
        self.save_hyperparameters({"cfg": container})
        self.cfg = OmegaConf.create(container)
        self.vlm: VLM | None = None
        self.strict_loading = False  # checkpoints omit frozen pretrained weights; checked in on_load_checkpoint
        self.param_counts: dict[str, dict[str, int]] = {}

    def configure_model(self) -> None:
        if self.vlm is not None:
            return
        # Random-init parts must come out identical in every stage and on every rank.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.cfg.seed))
            self.vlm = build_vlm(self.cfg)
        self.param_counts = apply_freezing(self.vlm, list(self.cfg.stage.train))
        init = self.cfg.stage.get("init_connector_from")
        if init:
            load_connector_weights(self, init)

    # --- steps -------------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        out = self.vlm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            labels=batch["labels"],
        )
        return out.loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["input_ids"].shape[0])

    # --- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        stage = self.cfg.stage
        lr_for = {
            "connector": float(stage.connector_lr if stage.get("connector_lr") is not None else stage.lr),
            "llm": float(stage.lr),
            "encoder": float(stage.lr),
        }
        model = self.trainer.model if self.trainer is not None else self
        groups = param_groups(model.named_parameters(), lr_for, part_of, float(stage.weight_decay))
        optimizer = torch.optim.AdamW(groups, betas=tuple(stage.betas), eps=float(stage.eps))
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = warmup_cosine(optimizer, total, float(stage.warmup_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = tuple(persisted_prefixes(self.cfg))
        state = checkpoint["state_dict"]
        for key in [k for k in state if not k.startswith(keep)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.configure_model()
        check_checkpoint_keys(self, checkpoint["state_dict"], persisted_prefixes(self.cfg))


def check_checkpoint_keys(module: torch.nn.Module, state: dict[str, torch.Tensor], prefixes: list[str]) -> None:
    """Raise when a checkpoint lacks weights that only it can provide."""
    expected = {k for k in module.state_dict() if k.startswith(tuple(prefixes))}
    missing = sorted(expected - set(state))
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} weights it should hold, e.g. {missing[:3]}")


def load_connector_weights(module: DCModule, path: str) -> None:
    """Initialise from a stage-1 checkpoint: the connector, plus any random-init frozen weights it holds."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    if not any(k.startswith("vlm.connector.") for k in state):
        raise KeyError(f"stage.init_connector_from={path}: no connector weights in this checkpoint")
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own}
    for k, v in usable.items():
        if own[k].shape != v.shape:
            raise ValueError(f"stage.init_connector_from={path}: {k} has shape {tuple(v.shape)}, model has {tuple(own[k].shape)}")
    module.load_state_dict(usable, strict=False)
    log.info("initialised %d tensors from %s", len(usable), path)


def load_module(ckpt_path: str, map_location: str = "cpu", **cfg_overrides: Any) -> DCModule:
    """Rebuild a `DCModule` from a checkpoint: config from the checkpoint, pretrained parts from their source."""
    ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=False)
    cfg = OmegaConf.create(ckpt["hyper_parameters"]["cfg"])
    cfg.stage.init_connector_from = None
    for key, value in cfg_overrides.items():
        OmegaConf.update(cfg, key, value)
    module = DCModule(cfg)
    module.configure_model()
    check_checkpoint_keys(module, ckpt["state_dict"], persisted_prefixes(cfg))
    module.load_state_dict(ckpt["state_dict"], strict=False)
    return module
