"""Throughput and MFU from analytic FLOPs.

Model FLOPs per training batch, per part (N = parameter count of the part, counted before any sharding):

* forward: 2·N per token the part processes;
* backward to activations: another 2·N per token when anything *upstream* of the part trains (the frozen LLM
  of stage 1 still back-propagates to the connector: 2 + 2 = 4·N);
* backward to weights: another 2·N per token for the trained parameters (a fully trained part: 6·N).

Tokens per part, from each batch's real counts: the vision encoder sees `encoder_tokens_per_image` per *view*
(patches + CLS; an AnyRes image has 1 + crops views, a video one per frame), the connector emits
`visual_tokens_per_image` per view, the LLM processes the batch's non-pad tokens (text + merged visual tokens). The
LLM's input embedding is a lookup and is not counted; `lm_head` is. Attention-score FLOPs and activation
recomputation (activation checkpointing) are not counted, so this is MFU in the 6·N·D sense, not HFU.

Mini-Gemini (`mgm_flops`): the ConvNeXt aux tower and the patch-info mining do not run once per token, so their
parameters are left out of the encoder / connector counts and added per view as Σ parameters × positions (the aux
tower at each stage's resolution, forward only while frozen; the mining's query projector over the patch tokens,
its key/value projectors over every aux position, with the connector's factor).

The peak comes from an explicit table selected by config (`callbacks.throughput.device`), never from the
device name (Lightning's table misses "NVIDIA H200" and lists sparsity peaks for some parts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import nn

from dc.models.encoders.dual import DualEncoder

# Dense bf16 tensor-core peak per device, FLOP/s.
PEAK_BF16_FLOPS: dict[str, float] = {
    "a100": 312e12,
    "h100_sxm": 989e12,
    "h200": 989e12,
}


def resolve_peak_flops(device: str | None, override: float | None = None) -> float | None:
    """Peak FLOP/s for `callbacks.throughput.device` (or the explicit `peak_flops` override); None: no MFU."""
    if override is not None:
        return float(override)
    if device is None:
        return None
    if device not in PEAK_BF16_FLOPS:
        raise ValueError(f"callbacks.throughput.device={device!r}: expected one of {sorted(PEAK_BF16_FLOPS)} or null")
    return PEAK_BF16_FLOPS[device]


@dataclass(frozen=True)
class FlopsSpec:
    """What the FLOPs formula needs to know about a VLM and its stage."""

    encoder_params: int
    encoder_trained: bool
    encoder_tokens_per_image: int
    connector_params: int
    connector_trained: bool
    visual_tokens_per_image: int
    llm_params: int  # all LLM parameters except the input embedding (frozen base + trained + adapters)
    llm_trained_params: int  # those of them that train (full fine-tune: all; LoRA: the adapters)
    aux_flops_per_image: float = 0.0  # Mini-Gemini aux tower + mining, per view (`mgm_flops`)

    def batch_flops(self, tokens: int, images: int) -> float:
        """Model FLOPs of one training micro-batch with `tokens` non-pad LLM tokens and `images` images."""
        enc_tokens = images * self.encoder_tokens_per_image
        vis_tokens = images * self.visual_tokens_per_image
        enc = (6 if self.encoder_trained else 2) * self.encoder_params * enc_tokens
        conn_factor = 2 + (2 if self.connector_trained else 0) + (2 if self.encoder_trained else 0)
        conn = conn_factor * self.connector_params * vis_tokens
        upstream_trains = self.encoder_trained or self.connector_trained or self.llm_trained_params > 0
        llm = (2 + (2 if upstream_trains else 0)) * self.llm_params * tokens + 2 * self.llm_trained_params * tokens
        return float(enc + conn + llm + images * self.aux_flops_per_image)


def _count(params: Any, trained: bool | None = None) -> int:
    return sum(p.numel() for p in params if trained is None or p.requires_grad == trained)


def mgm_flops(vlm: nn.Module) -> tuple[set[int], float]:
    """(ids of the parameters counted here, FLOPs per view) of a Mini-Gemini VLM's aux tower and mining; ((), 0)
    for any other VLM.

    Aux tower: (2, or 6 when it trains) × `ConvNeXtEncoder.param_positions()`. Mining: `param_positions(patch
    tokens, aux positions)` × the connector's factor (2 forward + 2 when it trains + 2 when the encoder trains).
    """
    encoder, mining = vlm.encoder, getattr(vlm.connector, "mining", None)
    if mining is None or not isinstance(encoder, DualEncoder):
        return set(), 0.0
    aux = encoder.aux
    aux_ids = {id(p) for p in aux.parameters()}
    clip_trained = any(p.requires_grad for p in encoder.parameters() if id(p) not in aux_ids)
    aux_trained = any(p.requires_grad for p in aux.parameters())
    mining_trained = any(p.requires_grad for p in mining.parameters())
    height, width = aux.feature_size()
    mining_factor = 2 + (2 if mining_trained else 0) + (2 if clip_trained or aux_trained else 0)
    flops = (6 if aux_trained else 2) * aux.param_positions() + mining_factor * mining.param_positions(
        encoder.layout.num_patches, height * width
    )
    return aux_ids | {id(p) for p in mining.parameters()}, float(flops)


def flops_spec(vlm: nn.Module) -> FlopsSpec:
    """The `FlopsSpec` of a built (unsharded; meta is fine) VLM with its stage's freezing applied."""
    layout = vlm.encoder.layout
    enc_tokens = (layout.image_size // layout.patch_size) ** 2 + layout.num_prefix_tokens
    embed = {id(p) for p in vlm.llm.model.get_input_embeddings().parameters()}
    llm_params = [p for p in vlm.llm.parameters() if id(p) not in embed]
    skip, aux_flops = mgm_flops(vlm)
    encoder_params = [p for p in vlm.encoder.parameters() if id(p) not in skip]
    connector_params = [p for p in vlm.connector.parameters() if id(p) not in skip]
    return FlopsSpec(
        encoder_params=_count(encoder_params),
        encoder_trained=_count(encoder_params, True) > 0,
        encoder_tokens_per_image=enc_tokens,
        connector_params=_count(connector_params),
        connector_trained=_count(vlm.connector.parameters(), True) > 0,
        visual_tokens_per_image=int(vlm.connector.num_visual_tokens()),
        llm_params=_count(llm_params),
        llm_trained_params=_count(llm_params, True),
        aux_flops_per_image=aux_flops,
    )


def batch_counts(batch: dict[str, Any]) -> tuple[int, int, int]:
    """(samples, non-pad tokens, images) of a collated batch."""
    pixels = batch.get("pixel_values")
    images = 0 if pixels is None else int(pixels.shape[0])
    return int(batch["input_ids"].shape[0]), int(batch["attention_mask"].sum()), images


class VLMThroughput(L.Callback):
    """Logs per-device samples/s, non-pad tokens/s, model TFLOP/s and MFU every `log_every_n_steps` optimizer steps.

    Counts are this rank's micro-batches since the last log; time is wall clock between two synchronised log
    points, so the window covers data loading, forward/backward, communication and the optimizer step.
    Metrics: `perf/samples_per_s` and `perf/samples_per_s_global` (× world size), `perf/tokens_per_s_per_device`,
    `perf/tflops_per_device`, `perf/mfu` (only with a peak).

    Args:
        device: key of `PEAK_BF16_FLOPS` ("a100", "h100_sxm", "h200") or None (no MFU).
        peak_flops: explicit peak FLOP/s per device, overriding `device`.
        log_every_n_steps: optimizer steps per measurement window.
    """

    def __init__(self, device: str | None = None, peak_flops: float | None = None, log_every_n_steps: int = 10) -> None:
        self.peak = resolve_peak_flops(device, peak_flops)
        self.every = max(1, int(log_every_n_steps))
        self.spec: FlopsSpec | None = None
        self._reset()

    def _reset(self) -> None:
        self.samples = self.tokens = self.images = 0
        self.flops = 0.0
        self.t0: float | None = None

    @staticmethod
    def _sync(trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.spec = getattr(pl_module, "flops_spec", None)
        self._reset()
        self._sync(trainer)
        self.t0 = time.perf_counter()
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        samples, tokens, images = batch_counts(batch)
        self.samples += samples
        self.tokens += tokens
        self.images += images
        if self.spec is not None:
            self.flops += self.spec.batch_flops(tokens, images)
        step = trainer.global_step
        if step == self._last_step or step % self.every:
            return
        self._last_step = step
        self._sync(trainer)
        now = time.perf_counter()
        metrics = self.compute(now - (self.t0 or now), trainer.world_size)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        pl_module.perf_metrics = metrics  # the latest window, for tests and the final summary
        self._reset()
        self.t0 = now

    def compute(self, seconds: float, world_size: int = 1) -> dict[str, float]:
        """Metrics for the current window lasting `seconds`."""
        seconds = max(seconds, 1e-9)
        out = {
            "perf/samples_per_s": self.samples / seconds,
            "perf/samples_per_s_global": self.samples * world_size / seconds,
            "perf/tokens_per_s_per_device": self.tokens / seconds,
        }
        if self.spec is not None:
            out["perf/tflops_per_device"] = self.flops / seconds / 1e12
            if self.peak:
                out["perf/mfu"] = self.flops / seconds / self.peak
        return out
