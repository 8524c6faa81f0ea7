"""The LightningModule: builds the VLM in `configure_model`, applies the stage, trains, checkpoints.

Training concerns only; the model is `dc.models.vlm.VLM`, built by `dc.models.builder.build_vlm` from the model
config (`encoder`, `connector`, `llm`, `image`), and what a checkpoint holds is `dc.training.checkpoint`'s.

Under `trainer=fsdp` with `cpu_ram_efficient_loading`, ranks other than 0 build the pretrained LLM on the meta
device (`build_vlm(..., llm_on_meta=True)`); FSDP materialises it and broadcasts rank 0's weights.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from dc.constants import IMAGE_TOKEN_INDEX
from dc.models.builder import build_vlm
from dc.models.llms.layout import token_layout
from dc.models.llms.templates import ChatTemplate
from dc.models.vlm import VLM
from dc.training.checkpoint import MODEL_KEYS, check_checkpoint_keys, keeps_key, read_checkpoint
from dc.training.lora import apply_lora
from dc.training.optim import adamw_impl_kwargs, keep_adamw_impl, param_groups, warmup_cosine
from dc.training.precision import resolve_frozen_dtype, store_frozen
from dc.training.stages import PARTS, apply_freezing, part_of
from dc.training.throughput import FlopsSpec, flops_spec
from dc.utils.errors import ConfigError
from dc.utils.instantiate import instantiate

log = logging.getLogger(__name__)


def model_config(cfg: DictConfig) -> dict[str, Any]:
    """The model part of a root config (`encoder`, `connector`, `llm`, `image`), resolved to plain values."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in MODEL_KEYS if cfg.get(k) is not None}


class DCModule(L.LightningModule):
    """Lightning wrapper around a `VLM`.

    Args:
        model: the model config (`model_config(cfg)`): encoder, connector, llm, image.
        stage: the `stage` config (what trains, learning rates, schedule, LoRA, init).
        seed: seeds the random-init parts (identical in every stage and on every rank).
        tokenizer: the LLM's tokenizer, already loaded by the pipeline (so it is read once); None: load it.
        total_steps: optimizer steps of the whole run, for the LR schedule (None: the trainer's estimate).
    """

    def __init__(
        self,
        model: dict[str, Any] | DictConfig,
        stage: dict[str, Any] | DictConfig,
        seed: int = 0,
        tokenizer: PreTrainedTokenizerBase | None = None,
        total_steps: int | None = None,
    ) -> None:
        super().__init__()
        model = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else dict(model)
        stage = OmegaConf.to_container(stage, resolve=True) if isinstance(stage, DictConfig) else dict(stage)
        # logger=False: the loggers get the whole run config (flat choices + `cfg`) from `build_loggers` instead.
        self.save_hyperparameters({"model": model, "stage": stage, "seed": int(seed)}, logger=False)
        self.model_cfg = OmegaConf.create(model)
        self.stage = OmegaConf.create(stage)
        self.seed = int(seed)
        self.tokenizer = tokenizer
        self.total_steps = total_steps
        template = self.stage.get("template")
        self.stage_template: ChatTemplate | None = instantiate(template) if template else None
        self.vlm: VLM | None = None
        self.strict_loading = False  # checkpoints omit frozen pretrained weights; checked in on_load_checkpoint
        self.param_counts: dict[str, dict[str, int]] = {}
        self.flops_spec: FlopsSpec | None = None
        self.state_keys: list[str] = []  # state-dict keys of the unwrapped module (FSDP renames them later)

    def _low_ram_rank(self) -> bool:
        """True on FSDP ranks other than 0 when only rank 0 reads the pretrained LLM."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        return (
            bool(getattr(strategy, "cpu_ram_efficient_loading", False))
            and strategy.world_size > 1
            and strategy.global_rank != 0
        )

    def configure_model(self) -> None:
        if self.vlm is not None:
            return
        # Random-init parts (and LoRA A matrices) must come out identical in every stage and on every rank.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.vlm = build_vlm(self.model_cfg, tokenizer=self.tokenizer, llm_on_meta=self._low_ram_rank())
            self.param_counts = apply_freezing(self.vlm, list(self.stage.train))
            init = self.stage.get("init_connector_from")
            if init:
                load_connector_weights(self, init)
            lora = self.stage.get("lora")
            if lora:
                apply_lora(self.vlm.llm, lora)
                self.param_counts = _count_parts(self.vlm)
        # `from_pretrained` returns HF models in eval mode and Lightning keeps submodule modes: without this a
        # pretrained LLM would train with dropout (LoRA's 0.05 included) off. Frozen encoders stay in eval.
        self.vlm.train()
        self.flops_spec = flops_spec(self.vlm)
        # --- speed and memory (dc.training.precision, dc.training.fsdp2) ---
        store_frozen(self.vlm, resolve_frozen_dtype(self.stage.get("frozen_dtype"), self._trainer))
        parallelize = getattr(self._trainer.strategy, "parallelize", None) if self._trainer is not None else None
        if parallelize is not None:  # FSDP2: fully_shard per layer/block/connector, then the VLM
            parallelize(self)
        self.state_keys = list(self.state_dict().keys())

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Add the batch's `TokenLayout` (host-side loss positions, packing) before it moves to the device."""
        mode = self.vlm.llm.layout_mode() if self.vlm is not None else None
        if mode is not None and isinstance(batch, dict) and batch.get("labels") is not None and "layout" not in batch:
            batch["layout"] = token_layout(
                batch["attention_mask"],
                batch["labels"],
                packed=mode == "packed",
                input_ids=batch["input_ids"],
                visual_token_id=IMAGE_TOKEN_INDEX,
            )
        return batch

    # --- steps -------------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        out = self.vlm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            labels=batch["labels"],
            visual=batch.get("visual"),
            **({"layout": batch["layout"]} if batch.get("layout") is not None else {}),
        )
        return out.loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        # Not `prog_bar=True`: Lightning turns progress-bar metrics into Python floats after every batch, a device
        # sync per micro-batch (the GPU drains its queue and idles while the host prepares the next batch). The
        # loggers convert it every `log_every_n_steps`; the bar shows it through `dc.training.callbacks.LossBar*`.
        self.log("train/loss", loss, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["input_ids"].shape[0])

    # --- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        stage = self.stage
        lr_for = {
            "connector": float(stage.connector_lr if stage.get("connector_lr") is not None else stage.lr),
            "llm": float(stage.lr),
            "encoder": float(stage.lr),
        }
        model = self.trainer.model if self._trainer is not None else self
        groups = param_groups(model.named_parameters(), lr_for, part_of, float(stage.weight_decay))
        impl = adamw_impl_kwargs((p for g in groups for p in g["params"]), str(stage.get("optimizer_impl", "auto")))
        optimizer = torch.optim.AdamW(groups, betas=tuple(stage.betas), eps=float(stage.eps), **impl)
        keep_adamw_impl(optimizer, impl)  # a resumed run keeps this choice, whatever the checkpoint's was
        total = self.total_steps if self.total_steps is not None else int(self.trainer.estimated_stepping_batches)
        scheduler = warmup_cosine(optimizer, total, float(stage.warmup_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by global norm; under FSDP through the root module (`torch.nn.utils.clip_grad_norm_` would only
        see this rank's shards, and Lightning's FSDP precision plugin refuses norm clipping).
        """
        if not gradient_clip_val:
            return
        model = self.trainer.model if self._trainer is not None else None
        from torch.distributed.fsdp import FullyShardedDataParallel

        if isinstance(model, FullyShardedDataParallel):
            if gradient_clip_algorithm not in (None, "norm"):
                raise ConfigError(
                    f"trainer.gradient_clip_algorithm={gradient_clip_algorithm!r}: FSDP supports only 'norm'"
                )
            model.clip_grad_norm_(float(gradient_clip_val))
            return
        self.clip_gradients(
            optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log `train/grad_norm`: the global L2 norm of the gradients, before clipping, every optimizer step.

        Under FSDP each rank holds a shard, so the norm is FSDP's own collective one (`clip_grad_norm_` with an
        infinite bound scales nothing); otherwise the gradients are whole on every rank (DDP reduced them).
        """
        model = self.trainer.model
        from torch.distributed.fsdp import FullyShardedDataParallel

        if isinstance(model, FullyShardedDataParallel):
            norm = model.clip_grad_norm_(float("inf"))
        else:
            norms = [
                torch.linalg.vector_norm(p.grad, dtype=torch.float32) for p in self.parameters() if p.grad is not None
            ]
            if not norms:
                return
            norm = torch.linalg.vector_norm(torch.stack(norms))
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    # --- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        strategy = self._trainer.strategy if self._trainer is not None else None
        if getattr(strategy, "state_dict_type", "full") == "sharded":
            return  # the distributed loader needs every key back; consolidate --weights-only trims
        state = checkpoint["state_dict"]
        for key in [k for k in state if not keeps_key(self.model_cfg, self.stage, k)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.configure_model()
        if "state_dict" in checkpoint:  # absent for sharded FSDP checkpoints (loaded straight into the shards)
            check_checkpoint_keys(self.state_keys, checkpoint["state_dict"], self.model_cfg, self.stage)


def _count_parts(vlm: VLM) -> dict[str, dict[str, int]]:
    counts = {}
    for part in PARTS:
        params = list(getattr(vlm, part).parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        counts[part] = {"trainable": trainable, "frozen": sum(p.numel() for p in params) - trainable}
        log.info("%-9s trainable %12s  frozen %12s", part, f"{trainable:,}", f"{counts[part]['frozen']:,}")
    return counts


def load_connector_weights(module: DCModule, path: str) -> None:
    """Initialise from a stage-1 checkpoint: the connector, plus any random-init frozen weights it holds.

    The file is read safely (tensors only); its stored config is not used.
    """
    state = read_checkpoint(path).get("state_dict") or {}
    if not any(k.startswith("vlm.connector.") for k in state):
        raise KeyError(f"stage.init_connector_from={path}: no connector weights in this checkpoint")
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own}
    for k, v in usable.items():
        if own[k].shape != v.shape:
            raise ConfigError(
                f"stage.init_connector_from={path}: {k} has shape {tuple(v.shape)}, model has {tuple(own[k].shape)}"
            )
    module.load_state_dict(usable, strict=False)
    log.info("initialised %d tensors from %s", len(usable), path)
