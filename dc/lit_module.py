"""The LightningModule: builds the VLM in `configure_model`, applies the stage, trains, checkpoints.

Training concerns only; the model itself is `dc.models.vlm.VLM`.

Checkpoints hold the weights that cannot be rebuilt from config: everything trainable (LoRA adapters included),
plus frozen parts that were built with random weights (the tiny models). Frozen parts loaded from `pretrained`
are left out and come back from their source when the checkpoint is loaded (`load_module`). Sharded FSDP
checkpoints are the exception: they hold everything, because the distributed loader needs every key (consolidate
with `python -m dc.training.checkpoint consolidate --weights-only` to get the small file).

Under `trainer=fsdp` with `cpu_ram_efficient_loading`, ranks other than 0 build the pretrained LLM on the meta
device (`dc.training.fsdp.build_vlm_low_ram`); FSDP materialises it and broadcasts rank 0's weights.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from dc.models.builder import build_vlm
from dc.models.vlm import VLM
from dc.training.fsdp import build_vlm_low_ram
from dc.training.lora import LORA_KEY, apply_lora
from dc.training.optim import param_groups, warmup_cosine
from dc.training.stages import PARTS, apply_freezing, part_of
from dc.training.throughput import FlopsSpec, flops_spec

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


def keeps_key(cfg: DictConfig, key: str) -> bool:
    """Whether a checkpoint for `cfg` must hold the state-dict entry `key`."""
    if key.startswith(tuple(persisted_prefixes(cfg))):
        return True
    return bool(cfg.stage.get("lora")) and LORA_KEY in key


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
        self.flops_spec: FlopsSpec | None = None
        self.state_keys: list[str] = []  # state-dict keys of the unwrapped module (FSDP renames them later)

    def _low_ram_rank(self) -> bool:
        """True on FSDP ranks other than 0 when only rank 0 reads the pretrained LLM."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        return bool(getattr(strategy, "cpu_ram_efficient_loading", False)) and strategy.world_size > 1 and strategy.global_rank != 0

    def configure_model(self) -> None:
        if self.vlm is not None:
            return
        build = build_vlm_low_ram if self._low_ram_rank() else build_vlm
        # Random-init parts (and LoRA A matrices) must come out identical in every stage and on every rank.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.cfg.seed))
            self.vlm = build(self.cfg)
            self.param_counts = apply_freezing(self.vlm, list(self.cfg.stage.train))
            init = self.cfg.stage.get("init_connector_from")
            if init:
                load_connector_weights(self, init)
            lora = self.cfg.stage.get("lora")
            if lora:
                apply_lora(self.vlm.llm, lora)
                self.param_counts = _count_parts(self.vlm)
        # `from_pretrained` returns HF models in eval mode and Lightning keeps submodule modes: without this a
        # pretrained LLM would train with dropout (LoRA's 0.05 included) off. Frozen encoders stay in eval.
        self.vlm.train()
        self.flops_spec = flops_spec(self.vlm)
        self.state_keys = list(self.state_dict().keys())

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

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip by global norm; under FSDP through the root module (`torch.nn.utils.clip_grad_norm_` would only
        see this rank's shards, and Lightning's FSDP precision plugin refuses norm clipping)."""
        if not gradient_clip_val:
            return
        model = self.trainer.model if self._trainer is not None else None
        from torch.distributed.fsdp import FullyShardedDataParallel

        if isinstance(model, FullyShardedDataParallel):
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(f"trainer.gradient_clip_algorithm={gradient_clip_algorithm!r}: FSDP supports only 'norm'")
            model.clip_grad_norm_(float(gradient_clip_val))
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

    # --- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        strategy = self._trainer.strategy if self._trainer is not None else None
        if getattr(strategy, "state_dict_type", "full") == "sharded":
            return  # the distributed loader needs every key back; consolidate --weights-only trims
        state = checkpoint["state_dict"]
        for key in [k for k in state if not keeps_key(self.cfg, k)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.configure_model()
        if "state_dict" in checkpoint:  # absent for sharded FSDP checkpoints (loaded straight into the shards)
            check_checkpoint_keys(self.state_keys, checkpoint["state_dict"], self.cfg)


def _count_parts(vlm: VLM) -> dict[str, dict[str, int]]:
    counts = {}
    for part in PARTS:
        params = list(getattr(vlm, part).parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        counts[part] = {"trainable": trainable, "frozen": sum(p.numel() for p in params) - trainable}
        log.info("%-9s trainable %12s  frozen %12s", part, f"{trainable:,}", f"{counts[part]['frozen']:,}")
    return counts


def check_checkpoint_keys(expected_keys: Any, state: dict[str, torch.Tensor], cfg: DictConfig) -> None:
    """Raise when a checkpoint lacks weights that only it can provide."""
    expected = {k for k in expected_keys if keeps_key(cfg, k)}
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
    """Rebuild a `DCModule` from a checkpoint: config from the checkpoint, pretrained parts from their source.

    Returned in eval mode (inference); call `.train()` to train it further.
    """
    ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=False)
    cfg = OmegaConf.create(ckpt["hyper_parameters"]["cfg"])
    cfg.stage.init_connector_from = None
    for key, value in cfg_overrides.items():
        OmegaConf.update(cfg, key, value)
    module = DCModule(cfg)
    module.configure_model()
    check_checkpoint_keys(module.state_keys, ckpt["state_dict"], cfg)
    module.load_state_dict(ckpt["state_dict"], strict=False)
    return module.eval()
